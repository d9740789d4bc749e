//! The operator's client for Elastic's Fleet route (Kibana's Fleet package API and ML module
//! setup) against the stand-in's Kibana and package registry (TEST STAND-IN: the registry's
//! `dga` packages are generated from real-stack.md's facts; CONFORMANCE.md "Fleet packages and
//! ML modules"). The engine does not use this route yet (issue 20); these tests pin the client.

use dga_operator::error::Error;
use dga_operator::kibana::fleet::{ModuleSetup, kibana_satisfies};
use dga_operator::kibana::{Auth, KibanaClient};
use dga_standin::{Standin, StandinConfig};
use serde_json::Value;

async fn standin(kibana: &str, packages: &[&str]) -> Standin {
    Standin::start(StandinConfig {
        kibana_version: kibana.into(),
        es_version: kibana.into(),
        fleet_packages: packages.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn client(s: &Standin) -> KibanaClient {
    KibanaClient::new(
        reqwest::Client::new(),
        &s.kibana_url(),
        Auth::Basic {
            username: "elastic".into(),
            password: "changeme".into(),
        },
    )
}

async fn es_get(s: &Standin, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", s.es_url()))
        .basic_auth("elastic", Some("changeme"))
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn install_by_version_then_module_setup_then_uninstall() {
    for kibana in ["8.17.0", "9.2.0"] {
        let s = standin(kibana, &["dga-2.3.6", "dga-2.3.7"]).await;
        let c = client(&s);
        let st = c
            .fleet_package("dga", None)
            .await
            .unwrap()
            .expect("in the registry");
        assert_eq!(st.installed, None, "{kibana}");
        assert_eq!(st.latest.as_deref(), Some("2.3.7"), "{kibana}");
        let asked = c
            .fleet_package("dga", Some("2.3.7"))
            .await
            .unwrap()
            .unwrap();
        let constraint = asked.kibana_constraint.expect("a Kibana constraint");
        assert_eq!(kibana_satisfies(&constraint, kibana), Ok(true), "{kibana}");

        let items = c.fleet_install("dga", "2.3.7", false).await.unwrap();
        assert!(!items.is_empty(), "{kibana}: no assets reported");
        let st = c.fleet_package("dga", None).await.unwrap().unwrap();
        assert_eq!(st.installed.as_deref(), Some("2.3.7"), "{kibana}");
        assert_eq!(st.install_source.as_deref(), Some("registry"), "{kibana}");
        // What Fleet creates in Elasticsearch: the version-prefixed pipelines.
        let (code, _) = es_get(&s, "/_ingest/pipeline/2.3.7-ml_dga_ingest_pipeline").await;
        assert_eq!(code, 200, "{kibana}");

        // The module's job on a stack without DNS data: created, its datafeed waiting.
        let setup = ModuleSetup {
            index_pattern_name: Some("logs-network_traffic.dns-*".into()),
            start_datafeed: true,
            ..Default::default()
        };
        let answer = c.ml_module_setup("default", "dga", &setup).await.unwrap();
        assert_eq!(answer.jobs.len(), 1, "{kibana}: {answer:?}");
        assert!(answer.jobs[0].success, "{kibana}: {answer:?}");
        assert_eq!(answer.jobs[0].id, "dga_high_sum_probability", "{kibana}");
        let df = &answer.datafeeds[0];
        assert!(df.success && !df.started, "{kibana}: {df:?}");
        assert!(
            df.error
                .as_deref()
                .unwrap_or_default()
                .contains("does not exist"),
            "{kibana}: {df:?}"
        );
        // A second setup is refused per job (the job exists): the answer says so, no error.
        let again = c.ml_module_setup("default", "dga", &setup).await.unwrap();
        assert!(!again.jobs[0].success, "{kibana}: {again:?}");

        c.fleet_uninstall("dga", "2.3.7").await.unwrap();
        let st = c.fleet_package("dga", None).await.unwrap().unwrap();
        assert_eq!(st.installed, None, "{kibana}");
        let (code, _) = es_get(&s, "/_ingest/pipeline/2.3.7-ml_dga_ingest_pipeline").await;
        assert_eq!(code, 404, "{kibana}");
        // Uninstalling what is not installed is not an error.
        c.fleet_uninstall("dga", "2.3.7").await.unwrap();
    }
}

/// Fleet installs a newer version whose Kibana constraint this Kibana does not meet; the
/// constraint read through the client is what lets the operator refuse it first.
#[tokio::test]
async fn a_version_for_a_newer_kibana_is_told_apart_before_installing() {
    let s = standin("9.2.0", &["dga-2.3.7", "dga-3.0.0"]).await;
    let c = client(&s);
    let v3 = c
        .fleet_package("dga", Some("3.0.0"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v3.kibana_constraint.as_deref(), Some("^9.4.0"));
    assert_eq!(kibana_satisfies("^9.4.0", "9.2.0"), Ok(false));
    let v2 = c
        .fleet_package("dga", Some("2.3.7"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        kibana_satisfies(v2.kibana_constraint.as_deref().unwrap(), "9.2.0"),
        Ok(true)
    );
}

/// A Kibana that cannot reach its registry: the package is unknown and an install is refused
/// (404, nothing written); the same archive uploaded installs with no registry.
#[tokio::test]
async fn without_a_registry_only_an_upload_installs() {
    let s = standin("8.17.0", &["dga-2.3.7"]).await;
    s.set_fleet_registry_reachable(false);
    let c = client(&s);
    assert_eq!(c.fleet_package("dga", None).await.unwrap(), None);
    match c.fleet_install("dga", "2.3.7", false).await {
        Err(Error::Rejected { status, detail, .. }) => {
            assert_eq!(status, 404);
            assert!(detail.contains("not found in registry"), "{detail}");
        }
        other => panic!("expected a 404 refusal, got {other:?}"),
    }
    let (code, _) = es_get(&s, "/_ingest/pipeline/2.3.7-ml_dga_ingest_pipeline").await;
    assert_eq!(code, 404);

    let zip = s.fleet_package_zip("2.3.7").unwrap();
    c.fleet_upload(zip).await.unwrap();
    let st = c.fleet_package("dga", None).await.unwrap().unwrap();
    assert_eq!(st.installed.as_deref(), Some("2.3.7"));
    assert_eq!(st.install_source.as_deref(), Some("upload"));
}
