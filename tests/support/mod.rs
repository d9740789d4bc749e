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
