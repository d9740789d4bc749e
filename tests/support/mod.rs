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

/// The DNS index the harness's stand-in starts with: Network Packet Capture's data stream
/// name, which the anomaly job's datafeed pattern `logs-network_traffic.*` matches and the
/// enrichment's default wiring (`packetbeat-*`) does not. Elasticsearch refuses to start a
/// datafeed whose indices match nothing; a stack running DGA detection has DNS data, a
/// fresh one does not (tests of that case delete it with `Standin::delete_index`).
pub const DNS_INDEX: &str = "logs-network_traffic.dns-default";

/// Gives the stand-in the DNS index a stack with DNS data has.
pub fn seed_dns_data(standin: &Standin) {
    standin.put_index_settings(DNS_INDEX, json!({}));
}

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
        if let Some(r) = real_stack() {
            purge_test_objects(&r).await;
        }
        let standin = Standin::start(cfg).await.expect("stand-in starts");
        seed_dns_data(&standin);
        let dir = tempfile::tempdir().unwrap();
        let fetcher = Fetcher::new(
            reqwest::Client::new(),
            &standin.github_url(),
            dir.path().join("cache"),
        );
        settings.namespace = Some(ns.name.clone());
        settings.request_timeout = Duration::from_secs(10);
        settings.backoff_cap = settings.backoff_cap.min(Duration::from_secs(5));
        // Failing DgaModels (bad Secrets, refused credentials) then release their finalizer soon
        // after a test deletes them.
        settings.delete_timeout = settings.delete_timeout.min(Duration::from_secs(5));
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
        self.standin.publish_built(REPO, &rel).unwrap();
        rel
    }

    /// Publishes a release of a small model (`dga_9_1.0`) and a router pipeline calling an
    /// inference pipeline made of `inference_processors`: processors the stand-in runs (it has
    /// no painless), so its canary run gives a verdict either way.
    pub fn publish_without_painless(&self, tag: &str, inference_processors: Value) {
        let mut model = Vec::new();
        dga_standin::model::write_model_json(
            &dga_standin::model::ModelSpec::new("dga_9_1.0", 60_000, 9),
            dga_standin::model::ModelEncoding::Plain,
            &mut model,
        )
        .unwrap();
        let router = json!({"processors": [{"pipeline": {"name": "t_inference_pipeline", "if": "ctx.type == 'dns'"}}]});
        let inference = json!({ "processors": inference_processors });
        let zip = self.dir.path().join(format!("{tag}.zip"));
        let (r, i) = (router.to_string(), inference.to_string());
        builder::write_custom_zip(
            &zip,
            &[
                (&format!("{tag}/dga_9_1.0_model.json"), model.as_slice()),
                (&format!("{tag}/t_ingest_pipeline.json"), r.as_bytes()),
                (&format!("{tag}/t_inference_pipeline.json"), i.as_bytes()),
            ],
        )
        .unwrap();
        self.standin
            .publish_release_files(REPO, tag, vec![(format!("{tag}.zip"), zip)])
            .unwrap();
    }

    /// A cluster Secret pointing at the stack under test. A password other than "changeme"
    /// makes a Secret with wrong credentials (on either stack).
    pub async fn secret(&self, name: &str, password: &str) {
        let data = match real_stack() {
            Some(r) => {
                let mut d = json!({"url": r.es});
                match (&r.api_key, password == "changeme") {
                    (Some(k), true) => d["api-key"] = k.clone().into(),
                    (_, true) => {
                        d["username"] = r.user.clone().into();
                        d["password"] = r.password.clone().into();
                    }
                    (_, false) => {
                        d["username"] = r.user.clone().into();
                        d["password"] = password.into();
                    }
                }
                if let Some(k) = &r.kibana {
                    d["kibana-url"] = k.clone().into();
                }
                if let Some(ca) = &r.ca {
                    d["ca.crt"] = String::from_utf8_lossy(ca).into_owned().into();
                }
                d
            }
            None => json!({
                "url": self.standin.es_url(), "username": "elastic", "password": password,
                "kibana-url": self.standin.kibana_url(),
            }),
        };
        self.secret_with(name, data).await;
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

    /// Deletes a DgaModel (the finalizer then runs; see `wait_gone`).
    pub async fn delete(&self, name: &str) {
        self.models_api()
            .delete(name, &kube::api::DeleteParams::default())
            .await
            .unwrap();
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

    /// Writes to Elasticsearch since the log was last cleared (always empty on a real stack,
    /// where no request log exists: such assertions only bite on the stand-in).
    pub fn es_writes(&self) -> Vec<String> {
        self.standin
            .requests()
            .iter()
            .filter(|r| r.service == dga_standin::Service::Es && r.is_write())
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    pub fn assert_no_off_spec(&self) {
        // On a real stack the stand-in only serves releases; the check still applies to it.
        let off = self.standin.off_spec_requests();
        assert!(off.is_empty(), "off-spec requests: {off:?}");
    }

    pub async fn finish(mut self) {
        self.assert_no_off_spec();
        // Leave the stack clean (it may be a shared real one): delete every DgaModel and let the
        // operator finalize them before it stops.
        let api = self.models_api();
        let _ = api
            .delete_collection(&DeleteParams::default(), &Default::default())
            .await;
        let _ = wait_for(Duration::from_secs(30), || async {
            api.list(&Default::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        })
        .await;
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

// ---------------------------------------------------------------------------------------------
// The stack under test: the stand-in by default, or a real Elasticsearch/Kibana when
// DGA_TEST_ES_URL (+ DGA_TEST_ES_USER/DGA_TEST_ES_PASSWORD or DGA_TEST_ES_API_KEY, optional
// DGA_TEST_KIBANA_URL, DGA_TEST_CA_CERT) is set. Tests read and hand-edit state through this, so
// the same assertions run against both. What only the stand-in can do (request logs, faults,
// licence switches) is checked only there.

pub struct RealStack {
    pub es: String,
    pub kibana: Option<String>,
    pub user: String,
    pub password: String,
    pub api_key: Option<String>,
    pub ca: Option<Vec<u8>>,
}

pub fn real_stack() -> Option<RealStack> {
    let es = std::env::var("DGA_TEST_ES_URL")
        .ok()
        .filter(|s| !s.is_empty())?;
    Some(RealStack {
        es: es.trim_end_matches('/').to_string(),
        kibana: std::env::var("DGA_TEST_KIBANA_URL")
            .ok()
            .filter(|s| !s.is_empty())
            .map(|s| s.trim_end_matches('/').to_string()),
        user: std::env::var("DGA_TEST_ES_USER").unwrap_or_else(|_| "elastic".into()),
        password: std::env::var("DGA_TEST_ES_PASSWORD").unwrap_or_default(),
        api_key: std::env::var("DGA_TEST_ES_API_KEY")
            .ok()
            .filter(|s| !s.is_empty()),
        ca: std::env::var("DGA_TEST_CA_CERT")
            .ok()
            .map(|p| std::fs::read(p).expect("DGA_TEST_CA_CERT readable")),
    })
}

pub struct Stack<'a> {
    env: &'a Env,
}

impl Env {
    /// True when the tests run against a real stack.
    pub fn real(&self) -> bool {
        real_stack().is_some()
    }

    pub fn stack(&self) -> Stack<'_> {
        Stack { env: self }
    }

    /// Skips the rest of a test that needs the stand-in (request log, faults, licence switches).
    pub fn standin_only(&self, what: &str) -> bool {
        if self.real() {
            eprintln!("skipped on a real stack: {what} needs the stand-in");
            return false;
        }
        true
    }
}

impl Stack<'_> {
    fn http(&self, r: &RealStack) -> reqwest::Client {
        let mut b = reqwest::Client::builder();
        if let Some(ca) = &r.ca {
            for c in reqwest::Certificate::from_pem_bundle(ca).unwrap() {
                b = b.add_root_certificate(c);
            }
        }
        b.build().unwrap()
    }

    async fn call(
        &self,
        method: reqwest::Method,
        kibana: bool,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let r = real_stack().expect("real stack");
        let base = if kibana {
            r.kibana.clone().expect("DGA_TEST_KIBANA_URL")
        } else {
            r.es.clone()
        };
        let mut req = self
            .http(&r)
            .request(method, format!("{base}{path}"))
            .header("kbn-xsrf", "true");
        req = match &r.api_key {
            Some(k) => req.header("Authorization", format!("ApiKey {k}")),
            None => req.basic_auth(&r.user, Some(&r.password)),
        };
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("real stack reachable");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Any Elasticsearch request: to the stand-in over HTTP (through its spec checks, as the
    /// operator's own requests go), or to the real stack.
    pub async fn es(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.either(method, false, path, body).await
    }

    /// Any Kibana request, to the stand-in or the real stack's Kibana.
    pub async fn kibana(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.either(method, true, path, body).await
    }

    async fn either(
        &self,
        method: reqwest::Method,
        kibana: bool,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        if self.env.real() {
            return self.call(method, kibana, path, body).await;
        }
        let base = if kibana {
            self.env.standin.kibana_url()
        } else {
            self.env.standin.es_url()
        };
        let mut req = reqwest::Client::new()
            .request(method, format!("{base}{path}"))
            .basic_auth("elastic", Some("changeme"));
        if kibana {
            req = req.header("kbn-xsrf", "true");
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("stand-in reachable");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn cluster_uuid(&self) -> String {
        if !self.env.real() {
            return self.env.standin.config().cluster_uuid.clone();
        }
        self.call(reqwest::Method::GET, false, "/", None).await.1["cluster_uuid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Models installed by the operator (tagged `dga-operator`) or with a release's id.
    pub async fn models(&self) -> std::collections::BTreeMap<String, Value> {
        if !self.env.real() {
            return self.env.standin.models();
        }
        let (_, b) = self
            .call(
                reqwest::Method::GET,
                false,
                "/_ml/trained_models/_all?size=1000",
                None,
            )
            .await;
        b["trained_model_configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| {
                m["model_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("dga"))
            })
            .map(|m| (m["model_id"].as_str().unwrap().to_string(), m.clone()))
            .collect()
    }

    /// Pipelines with DGA ids.
    pub async fn pipelines(&self) -> std::collections::BTreeMap<String, Value> {
        if !self.env.real() {
            return self.env.standin.pipelines();
        }
        let (s, b) = self
            .call(
                reqwest::Method::GET,
                false,
                "/_ingest/pipeline/*dga*,dns_enrich_pipeline,logs-network_traffic.dns@custom",
                None,
            )
            .await;
        if s == 404 {
            return Default::default();
        }
        b.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Stored scripts of the package (`{"lang","source"}`), by the well-known ids.
    pub async fn scripts(&self) -> std::collections::BTreeMap<String, Value> {
        if !self.env.real() {
            return self
                .env
                .standin
                .scripts()
                .into_iter()
                .map(|(k, v)| (k, v.get("script").cloned().unwrap_or(v)))
                .collect();
        }
        let mut out = std::collections::BTreeMap::new();
        for id in [
            "dga_ngrams_create",
            "dga_ngrams_transform_delete",
            "ml_dga_ngrams_create_script",
            "ml_dga_ngrams_transform_delete_script",
        ] {
            let (s, b) = self
                .call(
                    reqwest::Method::GET,
                    false,
                    &format!("/_scripts/{id}"),
                    None,
                )
                .await;
            if s == 200 && b["found"] == true {
                out.insert(id.to_string(), b["script"].clone());
            }
        }
        out
    }

    pub async fn put_pipeline(&self, id: &str, body: Value) {
        if !self.env.real() {
            return self.env.standin.put_pipeline(id, body);
        }
        self.call(
            reqwest::Method::PUT,
            false,
            &format!("/_ingest/pipeline/{id}"),
            Some(&body),
        )
        .await;
    }

    pub async fn delete_pipeline(&self, id: &str) {
        if !self.env.real() {
            return self.env.standin.delete_pipeline(id);
        }
        self.call(
            reqwest::Method::DELETE,
            false,
            &format!("/_ingest/pipeline/{id}"),
            None,
        )
        .await;
    }

    /// `script` is `{"lang","source"}`.
    pub async fn put_script(&self, id: &str, script: Value) {
        if !self.env.real() {
            return self.env.standin.put_script(id, json!({"script": script}));
        }
        self.call(
            reqwest::Method::PUT,
            false,
            &format!("/_scripts/{id}"),
            Some(&json!({"script": script})),
        )
        .await;
    }

    pub async fn jobs(&self) -> Vec<String> {
        if !self.env.real() {
            return self.env.standin.jobs().into_keys().collect();
        }
        self.ml_ids("/_ml/anomaly_detectors/dga*", "jobs", "job_id")
            .await
    }

    pub async fn datafeeds(&self) -> Vec<String> {
        if !self.env.real() {
            return self.env.standin.datafeeds().into_keys().collect();
        }
        self.ml_ids("/_ml/datafeeds/datafeed-dga*", "datafeeds", "datafeed_id")
            .await
    }

    /// The ids in a real stack's ML list answer (`{list: [{id_key: ..}]}`).
    async fn ml_ids(&self, path: &str, list: &str, id_key: &str) -> Vec<String> {
        let path = format!("{path}?allow_no_match=true");
        let (s, b) = self.call(reqwest::Method::GET, false, &path, None).await;
        if s != 200 {
            return vec![];
        }
        b[list]
            .as_array()
            .into_iter()
            .flatten()
            .map(|j| j[id_key].as_str().unwrap().to_string())
            .collect()
    }

    fn space_prefix(space: &str) -> String {
        if space == "default" {
            String::new()
        } else {
            format!("/s/{space}")
        }
    }

    pub async fn rules(&self, space: &str) -> Vec<Value> {
        if !self.env.real() {
            return self.env.standin.rules(space);
        }
        let path = format!(
            "{}/api/detection_engine/rules/_find?per_page=100&filter=alert.attributes.tags:%22ML-DGA%22",
            Self::space_prefix(space)
        );
        self.call(reqwest::Method::GET, true, &path, None).await.1["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Replaces a rule as a person would in Kibana.
    pub async fn put_rule(&self, space: &str, rule: Value) {
        if !self.env.real() {
            return self.env.standin.put_rule(space, rule);
        }
        let path = format!("{}/api/detection_engine/rules", Self::space_prefix(space));
        let (s, _) = self
            .call(reqwest::Method::PUT, true, &path, Some(&rule))
            .await;
        if s == 404 {
            self.call(reqwest::Method::POST, true, &path, Some(&rule))
                .await;
        }
    }

    pub async fn delete_rule(&self, space: &str, rule_id: &str) {
        if !self.env.real() {
            return self.env.standin.delete_rule(space, rule_id);
        }
        let path = format!(
            "{}/api/detection_engine/rules?rule_id={rule_id}",
            Self::space_prefix(space)
        );
        self.call(reqwest::Method::DELETE, true, &path, None).await;
    }
}

/// On a shared real stack: removes what earlier test runs left (objects whose ownership marker
/// names a test namespace, `<prefix>-<8 hex>`), using the operator's own cleanup per owner.
/// Nothing without such a marker is touched.
pub async fn purge_test_objects(r: &RealStack) {
    use dga_operator::engine::{self, Marker, Owner, observe::Ids};
    use dga_operator::target::{Auth, Endpoint, Sensitive};
    let auth = match &r.api_key {
        Some(k) => Auth::ApiKey(Sensitive::new(k.clone())),
        None => Auth::Basic {
            username: r.user.clone(),
            password: Sensitive::new(r.password.clone()),
        },
    };
    let ep = Endpoint::parse(&r.es, auth.clone(), r.ca.clone(), "url").unwrap();
    let es = dga_operator::elasticsearch::Elasticsearch::new(ep, Duration::from_secs(30)).unwrap();
    let test_ns = regex::Regex::new(r"^[a-z0-9-]+-[0-9a-f]{8}/").unwrap();
    let mut ids = Ids::default();
    ids.pipelines.extend(
        dga_operator::controller::KNOWN_PIPELINES
            .iter()
            .map(|s| s.to_string()),
    );
    ids.scripts.extend(
        dga_operator::controller::KNOWN_SCRIPTS
            .iter()
            .map(|s| s.to_string()),
    );
    let observed = engine::observe(&es, &ids)
        .await
        .expect("read the real stack");
    let mut owners = std::collections::BTreeSet::new();
    let markers = observed
        .pipelines
        .values()
        .filter_map(|p| Marker::from_meta(p.get("_meta")))
        .chain(
            observed
                .models
                .values()
                .filter_map(|m| Marker::from_meta(m.get("metadata"))),
        )
        .chain(observed.scripts.values().filter_map(|s| {
            s.get("source")
                .and_then(Value::as_str)
                .and_then(Marker::from_script_source)
        }));
    for m in markers {
        if test_ns.is_match(&m.owner) {
            owners.insert(m.owner);
        }
    }
    if let Some(job) = es.get_job(engine::mljob::JOB_ID).await.unwrap()
        && let Some(m) = Marker::from_meta(job.get("custom_settings"))
        && test_ns.is_match(&m.owner)
    {
        owners.insert(m.owner);
    }
    let kibana = r.kibana.as_ref().map(|k| {
        let ep = Endpoint::parse(k, auth.clone(), r.ca.clone(), "kibana-url").unwrap();
        dga_operator::kibana::KibanaClient::new(
            ep.http_client(Duration::from_secs(30)).unwrap(),
            &ep.url,
            ep.auth.clone(),
        )
    });
    for key in owners {
        let (namespace, name) = key.split_once('/').unwrap();
        let owner = Owner {
            namespace: namespace.into(),
            name: name.into(),
            uid: String::new(),
            adopted: Vec::new(),
        };
        if let Some(kb) = &kibana {
            for space in ["default", "secops"] {
                let tag = dga_operator::kibana::owner_tag(&key);
                if let Ok(found) = dga_operator::kibana::rules::observe(kb, space, &[], &tag).await
                {
                    for a in dga_operator::kibana::diff(&[], &found, &tag) {
                        let _ = dga_operator::kibana::rules::apply(kb, space, &a).await;
                    }
                }
            }
        }
        let _ = engine::mljob::remove(&es, &owner).await;
        engine::cleanup(&es, &owner, &Ids::default(), &ids)
            .await
            .expect("purge");
    }
}

// ---------------------------------------------------------------------------------------------
// Reliability tests (faults, crash-restart, bad input): a tunable Env, the end-state invariants
// and a request-log summary.

impl Env {
    /// Like `start_with`, but keeps `settings.request_timeout` and the backoffs as given (the
    /// fault tests want short timeouts to provoke and survive them quickly).
    pub async fn start_tuned(prefix: &str, cfg: StandinConfig, mut settings: Settings) -> Env {
        let ns = TestNs::new(prefix).await;
        let standin = Standin::start(cfg).await.expect("stand-in starts");
        seed_dns_data(&standin);
        let dir = tempfile::tempdir().unwrap();
        let fetcher = Fetcher::new(
            reqwest::Client::builder()
                .timeout(settings.request_timeout.max(Duration::from_secs(1)))
                .build()
                .unwrap(),
            &standin.github_url(),
            dir.path().join("cache"),
        );
        settings.namespace = Some(ns.name.clone());
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

    /// Deletes the test namespace without waiting for DgaModels (for tests that already
    /// checked deletion, or that must not block on it).
    pub async fn drop_namespace(mut self) {
        self.stop_controller();
        // Finalizers would hold the namespace: strip them.
        let api = self.models_api();
        if let Ok(list) = api.list(&Default::default()).await {
            for m in list.items {
                let _ = api
                    .patch(
                        &m.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
            }
        }
        let ns = TestNs {
            client: self.ns.client.clone(),
            name: self.ns.name.clone(),
        };
        ns.cleanup().await;
    }

    /// Violations of the end-state invariants (empty = fine):
    /// - every rule_id at most once per space;
    /// - every model tagged `dga-operator` is referenced by an installed pipeline (when
    ///   `deleted`: no such model, no DGA pipeline, script, rule or job left);
    /// - no pipeline's inference processor points at a missing model, and no pipeline calls a
    ///   missing pipeline.
    pub async fn invariant_violations(&self, deleted: bool) -> Vec<String> {
        let mut out = Vec::new();
        let stack = self.stack();
        let models = stack.models().await;
        let pipelines = stack.pipelines().await;
        let rules = stack.rules("default").await;
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        for r in &rules {
            *seen
                .entry(r["rule_id"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        for (id, n) in &seen {
            if *n > 1 {
                out.push(format!("rule_id {id} installed {n} times"));
            }
        }
        let mut referenced = std::collections::BTreeSet::new();
        for (pid, body) in &pipelines {
            for p in dga_operator::bundle::processors_of(body) {
                if let Some(m) = p.pointer("/inference/model_id").and_then(Value::as_str) {
                    referenced.insert(m.to_string());
                    if !models.contains_key(m) {
                        out.push(format!("pipeline {pid} uses missing model {m}"));
                    }
                }
                if let Some(name) = p.pointer("/pipeline/name").and_then(Value::as_str)
                    && !pipelines.contains_key(name)
                {
                    out.push(format!("pipeline {pid} calls missing pipeline {name}"));
                }
            }
        }
        for (id, m) in &models {
            let tagged = m["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "dga-operator"));
            if tagged && (deleted || !referenced.contains(id)) {
                out.push(format!("orphaned model {id}"));
            }
        }
        if deleted {
            if !pipelines.is_empty() {
                out.push(format!("pipelines left: {:?}", pipelines.keys()));
            }
            let scripts = stack.scripts().await;
            if !scripts.is_empty() {
                out.push(format!("scripts left: {:?}", scripts.keys()));
            }
            if !rules.is_empty() {
                out.push(format!("{} rules left", rules.len()));
            }
            let jobs = stack.jobs().await;
            if !jobs.is_empty() {
                out.push(format!("jobs left: {jobs:?}"));
            }
        }
        if !self.real() {
            let off = self.standin.off_spec_requests();
            if !off.is_empty() {
                out.push(format!("{} off-spec requests: {:?}", off.len(), off[0]));
            }
        }
        out
    }

    /// Every status message, condition message and event note of the namespace's DgaModels.
    pub async fn all_texts(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(list) = self.models_api().list(&Default::default()).await {
            for m in list.items {
                out.push(serde_json::to_string(&m.status).unwrap_or_default());
            }
        }
        let api: Api<k8s_openapi::api::events::v1::Event> = self.ns.api();
        if let Ok(list) = api.list(&Default::default()).await {
            for e in list.items {
                out.push(format!(
                    "{} {}",
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default()
                ));
            }
        }
        out
    }
}

/// A request log entry as a step key: `SERVICE METHOD path` (path with the query dropped).
pub fn request_key(r: &dga_standin::RequestRecord) -> String {
    format!("{:?} {} {}", r.service, r.method, r.path)
}

/// The distinct requests of a log, in first-seen order.
pub fn distinct_requests(log: &[dga_standin::RequestRecord]) -> Vec<dga_standin::RequestRecord> {
    let mut seen = std::collections::BTreeSet::new();
    log.iter()
        .filter(|r| seen.insert(request_key(r)))
        .cloned()
        .collect()
}

impl Env {
    /// The anomaly job's and its datafeed's states on the stand-in (`opened`, `started`), read
    /// through its Elasticsearch API as `elastic`/`password`. None when absent.
    pub async fn ml_states(&self, password: &str) -> (Option<String>, Option<String>) {
        let http = reqwest::Client::new();
        let get = |path: String| {
            let req = http
                .get(format!("{}{path}", self.standin.es_url()))
                .basic_auth("elastic", Some(password));
            async move {
                let r = req.send().await.ok()?;
                if !r.status().is_success() {
                    return None;
                }
                r.json::<Value>().await.ok()
            }
        };
        let job = get(format!(
            "/_ml/anomaly_detectors/{}/_stats",
            dga_operator::engine::mljob::JOB_ID
        ))
        .await
        .and_then(|v| {
            v.pointer("/jobs/0/state")
                .and_then(Value::as_str)
                .map(String::from)
        });
        let feed = get(format!(
            "/_ml/datafeeds/datafeed-{}/_stats",
            dga_operator::engine::mljob::JOB_ID
        ))
        .await
        .and_then(|v| {
            v.pointer("/datafeeds/0/state")
                .and_then(Value::as_str)
                .map(String::from)
        });
        (job, feed)
    }
}

/// Elastic's published DGA facts (`tests/standin/fixtures/elastic-dga-content.json`: the rules
/// and the ML jobs, with their source commits): what tests assert against, never the
/// operator's own constants.
pub fn elastic_facts() -> Value {
    serde_json::from_str(include_str!("../standin/fixtures/elastic-dga-content.json")).unwrap()
}

/// Elastic's DGA rule_ids, sorted.
pub fn elastic_rule_ids() -> Vec<String> {
    let mut ids: Vec<String> = elastic_facts()["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}
