//! Shared test bed: the real kube-apiserver started by `tests/testbed/k8s.sh` (its kubeconfig in
//! `KUBECONFIG`), a namespace per test, and the CRD installed once per run.
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt, ResourceExt};

use dga_operator::api::DgaModel;

pub async fn client() -> Client {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "these tests need a Kubernetes API server: run them through tests/run.sh, which starts one \
         (or set KUBECONFIG to an existing cluster)"
    );
    Client::try_default()
        .await
        .expect("kube client from KUBECONFIG")
}

/// Installs (or updates) the DgaModel CRD and waits until the apiserver serves it.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = DgaModel::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("dga-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    wait_for(Duration::from_secs(30), || async {
        let c = crds.get(&name).await.ok()?;
        let established = c
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await
    .expect("CRD established");
    // Discovery can trail the Established condition by a moment.
    let api: Api<DgaModel> = Api::all(client.clone());
    wait_for(Duration::from_secs(30), || async {
        api.list(&Default::default()).await.ok().map(|_| ())
    })
    .await
    .expect("DgaModel API served");
}

/// A fresh namespace for one test; deleted (best effort) by `TestNs::cleanup`.
pub struct TestNs {
    pub client: Client,
    pub name: String,
}

impl TestNs {
    pub async fn new(prefix: &str) -> Self {
        let client = client().await;
        install_crd(&client).await;
        let name = format!("{prefix}-{:08x}", rand::random::<u32>());
        let ns: Api<Namespace> = Api::all(client.clone());
        let obj: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"dga-operator-test": "true"}}
        }))
        .unwrap();
        ns.create(&PostParams::default(), &obj)
            .await
            .expect("create namespace");
        TestNs { client, name }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub async fn cleanup(self) {
        let ns: Api<Namespace> = Api::all(self.client.clone());
        let _ = ns.delete(&self.name, &DeleteParams::default()).await;
    }
}

/// Polls `f` until it yields `Some` or the timeout passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn kubectl(args: &[&str]) -> std::process::Output {
    std::process::Command::new("kubectl")
        .args(args)
        .output()
        .expect("run kubectl")
}

// ---------------------------------------------------------------------------------------------
// The operator under test: the stand-in stack, releases, and a controller watching the test's
// namespace, all in this process.

use std::path::PathBuf;
use std::sync::Arc;

use dga_operator::api::DgaModelStatus;
use dga_operator::bundle::fetch::Fetcher;
use dga_operator::controller::{self, Context, Settings};
use dga_standin::bundle::{self as builder, BundleSpec, Release};
use dga_standin::{Standin, StandinConfig};
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

pub const REPO: &str = "elastic/detection-rules";

pub struct Env {
    pub ns: TestNs,
    pub standin: Standin,
    pub ctx: Arc<Context>,
    controller: Option<tokio::task::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub async fn start(prefix: &str) -> Env {
        Self::start_with(prefix, StandinConfig::default(), Settings::default()).await
    }

    pub async fn start_with(prefix: &str, cfg: StandinConfig, mut settings: Settings) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("DGA_TEST_LOG"))
            .with_test_writer()
            .try_init();
        let ns = TestNs::new(prefix).await;
        let standin = Standin::start(cfg).await.expect("stand-in starts");
        let dir = tempfile::tempdir().unwrap();
        let fetcher = Fetcher::new(
            reqwest::Client::new(),
            &standin.github_url(),
            dir.path().join("cache"),
        );
        settings.namespace = Some(ns.name.clone());
        settings.request_timeout = Duration::from_secs(10);
        settings.backoff_cap = settings.backoff_cap.min(Duration::from_secs(5));
        let ctx = Arc::new(Context::new(ns.client.clone(), fetcher, settings));
        let mut env = Env {
            ns,
            standin,
            ctx,
            controller: None,
            dir,
        };
        env.start_controller();
        env
    }

    pub fn start_controller(&mut self) {
        let ctx = self.ctx.clone();
        self.controller = Some(tokio::spawn(controller::run(ctx)));
    }

    pub fn stop_controller(&mut self) {
        if let Some(h) = self.controller.take() {
            h.abort();
        }
    }

    /// Writes a small release, publishes it on the stand-in's releases API, returns it.
    pub fn publish(&self, tag: &str, layout: builder::Layout) -> Release {
        self.publish_spec(BundleSpec::small(tag, layout))
    }

    pub fn publish_spec(&self, spec: BundleSpec) -> Release {
        let out = self.dir.path().join("releases").join(&spec.tag);
        let rel = builder::write_release(&spec, &out).unwrap();
        self.standin
            .publish_release_files(
                REPO,
                &rel.tag,
                vec![
                    (format!("{}.zip", rel.tag), rel.zip_path.clone()),
                    (
                        format!("manifest-{}.json", rel.tag),
                        rel.manifest_path.clone(),
                    ),
                ],
            )
            .unwrap();
        rel
    }

    /// A cluster Secret pointing at the stand-in's Elasticsearch (and Kibana).
    pub async fn secret(&self, name: &str, password: &str) {
        self.secret_with(
            name,
            json!({
                "url": self.standin.es_url(), "username": "elastic", "password": password,
                "kibana-url": self.standin.kibana_url(),
            }),
        )
        .await;
    }

    pub async fn secret_with(&self, name: &str, data: Value) {
        let api: Api<Secret> = self.ns.api();
        let s: Secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))
                .unwrap();
        api.patch(
            name,
            &PatchParams::apply("dga-tests").force(),
            &Patch::Apply(&s),
        )
        .await
        .unwrap();
    }

    pub fn models_api(&self) -> Api<DgaModel> {
        self.ns.api()
    }

    pub async fn apply(&self, name: &str, spec: Value) -> DgaModel {
        let obj: DgaModel = serde_json::from_value(json!({
            "apiVersion": "dgaoperator.io/v1alpha1", "kind": "DgaModel", "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        self.models_api()
            .patch(
                name,
                &PatchParams::apply("dga-tests").force(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap()
    }

    pub async fn status(&self, name: &str) -> Option<DgaModelStatus> {
        self.models_api()
            .get_opt(name)
            .await
            .unwrap()
            .and_then(|m| m.status)
    }

    /// Waits until condition `type_` has `status` (and `reason`, when given) for the current
    /// generation; panics with the last status otherwise.
    pub async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: Option<&str>,
    ) -> DgaModel {
        let api = self.models_api();
        let last = std::sync::Mutex::new(None);
        let found = wait_for(Duration::from_secs(60), || {
            let api = api.clone();
            let last = &last;
            async move {
                let m = api.get_opt(name).await.ok()??;
                *last.lock().unwrap() = Some(m.clone());
                let st = m.status.as_ref()?;
                if st.observed_generation != m.metadata.generation {
                    return None;
                }
                let c = st.conditions.iter().find(|c| c.type_ == type_)?;
                let ok =
                    format!("{:?}", c.status) == status && reason.is_none_or(|r| c.reason == r);
                ok.then_some(m)
            }
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "{name}: {type_}={status} ({reason:?}) not reached; last status: {}",
                serde_json::to_string_pretty(
                    &last.into_inner().unwrap().and_then(|m: DgaModel| m.status)
                )
                .unwrap()
            )
        })
    }

    pub async fn wait_ready(&self, name: &str) -> DgaModel {
        self.wait_condition(name, "Ready", "True", None).await
    }

    pub async fn wait_gone(&self, name: &str) {
        let api = self.models_api();
        let gone = wait_for(Duration::from_secs(60), || async {
            api.get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await;
        assert!(
            gone.is_some(),
            "{name} still exists: {:?}",
            api.get_opt(name).await.unwrap().map(|m| m.status)
        );
    }

    pub async fn events(&self, name: &str) -> Vec<(String, String, String)> {
        let api: Api<k8s_openapi::api::events::v1::Event> = self.ns.api();
        let list = api.list(&Default::default()).await.unwrap();
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }

    pub async fn wait_event(&self, name: &str, reason: &str) -> (String, String, String) {
        let found = wait_for(Duration::from_secs(30), || async {
            self.events(name).await.into_iter().find(|e| e.1 == reason)
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "no {reason} event for {name}; events: {:?}",
                futures::executor::block_on(self.events(name))
            )
        })
    }

    /// Writes to Elasticsearch since the log was last cleared.
    pub fn es_writes(&self) -> Vec<String> {
        self.standin
            .requests()
            .iter()
            .filter(|r| r.service == dga_standin::Service::Es && r.is_write())
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    pub fn assert_no_off_spec(&self) {
        let off = self.standin.off_spec_requests();
        assert!(off.is_empty(), "off-spec requests: {off:?}");
    }

    pub async fn finish(mut self) {
        self.assert_no_off_spec();
        self.stop_controller();
        let ns = TestNs {
            client: self.ns.client.clone(),
            name: self.ns.name.clone(),
        };
        ns.cleanup().await;
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop_controller();
    }
}

pub fn cache_dir(env: &Env) -> PathBuf {
    env.dir.path().join("cache")
}

impl Env {
    /// Like `start`, but runs no controller in this process: for tests that run the operator
    /// binary as a subprocess against the same namespace and stand-in.
    pub async fn start_without_controller(prefix: &str) -> Env {
        let mut env = Self::start_with(prefix, StandinConfig::default(), Settings::default()).await;
        env.stop_controller();
        env
    }
}
