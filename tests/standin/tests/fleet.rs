//! Kibana's Fleet package API, the stand-in's package registry and Kibana ML's module setup
//! (TEST STAND-IN; conformance rows in CONFORMANCE.md "Fleet packages and ML modules").

use dga_standin::{Standin, StandinConfig};
use reqwest::{Client, Method};
use serde_json::{Value, json};

struct T {
    s: Standin,
    c: Client,
}

fn profile(kibana: &str, es: &str, packages: &[&str]) -> StandinConfig {
    StandinConfig {
        kibana_version: kibana.into(),
        es_version: es.into(),
        fleet_packages: packages.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    }
}

impl T {
    async fn new(cfg: StandinConfig) -> T {
        T {
            s: Standin::start(cfg).await.unwrap(),
            c: Client::new(),
        }
    }
    async fn send(
        &self,
        base: &str,
        m: Method,
        path: &str,
        ct: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut rb = self
            .c
            .request(m, format!("{base}{path}"))
            .basic_auth("elastic", Some("changeme"))
            .header("kbn-xsrf", "true");
        if let Some(b) = body {
            rb = rb.header("content-type", ct).body(b);
        }
        let r = rb.send().await.unwrap();
        let st = r.status().as_u16();
        let v = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null);
        (st, v)
    }
    async fn kb(&self, m: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let b = body.map(|b| b.to_string().into_bytes());
        self.send(&self.s.kibana_url(), m, path, "application/json", b)
            .await
    }
    async fn es(&self, m: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let b = body.map(|b| b.to_string().into_bytes());
        self.send(&self.s.es_url(), m, path, "application/json", b)
            .await
    }
    async fn install(&self, version: &str, body: Option<Value>) -> (u16, Value) {
        self.kb(
            Method::POST,
            &format!("/api/fleet/epm/packages/dga/{version}"),
            body,
        )
        .await
    }
    async fn info(&self) -> (u16, Value) {
        self.kb(Method::GET, "/api/fleet/epm/packages/dga", None)
            .await
    }
}

fn ids(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}:{}",
                i["type"].as_str().unwrap(),
                i["id"].as_str().unwrap()
            )
        })
        .collect()
}

/// A DNS event with the model's inputs already extracted (the stand-in skips painless).
fn dns_doc(domain: &str) -> Value {
    let mut doc = json!({
        "type": "dns",
        "dns": {"question": {
            "name": format!("www.{domain}"), "registered_domain": domain,
            "top_level_domain": "com", "subdomain": "www", "type": "A"
        }}
    });
    for (k, v) in dga_standin::model::extract_features_from_doc(&doc) {
        dga_standin::util::set_field(&mut doc, &k, v);
    }
    doc
}

#[tokio::test]
async fn install_by_version_creates_the_prefixed_pipelines_the_model_and_the_module() {
    for (kibana, es) in [("8.17.0", "8.17.0"), ("9.2.0", "9.2.0")] {
        let t = T::new(profile(
            kibana,
            es,
            &["dga-1.1.0", "dga-2.3.7", "dga-3.0.0"],
        ))
        .await;
        let (st, before) = t.info().await;
        assert_eq!(st, 200, "{kibana}: {before}");
        assert_eq!(before["item"]["status"], "not_installed");
        assert_eq!(
            before["item"]["version"], "2.3.7",
            "{kibana}: newest compatible"
        );
        assert!(before["item"].get("installationInfo").is_none());

        let (st, res) = t.install("2.3.7", None).await;
        assert_eq!(st, 200, "{kibana}: {res}");
        assert_eq!(res["_meta"]["install_source"], "registry");
        if kibana.starts_with('9') {
            assert_eq!(res["_meta"]["name"], "dga", "_meta.name in 9.x");
        } else {
            assert!(res["_meta"].get("name").is_none(), "no _meta.name in 8.x");
        }
        let got = ids(&res["items"]);
        for want in [
            "ml-module:dga",
            "ml_model:dga_1611725_2.0",
            "ingest_pipeline:2.3.7-ml_dga_ingest_pipeline",
            "ingest_pipeline:2.3.7-ml_dga_inference_pipeline",
        ] {
            assert!(
                got.contains(&want.to_string()),
                "{kibana}: {want} in {got:?}"
            );
        }
        // In Elasticsearch: the prefixed pipelines with Fleet's _meta, the router naming the
        // prefixed inference pipeline, and the model.
        let (st, p) = t
            .es(
                Method::GET,
                "/_ingest/pipeline/2.3.7-ml_dga_ingest_pipeline",
                None,
            )
            .await;
        assert_eq!(st, 200);
        let router = &p["2.3.7-ml_dga_ingest_pipeline"];
        assert_eq!(
            router["_meta"],
            json!({"managed_by": "fleet", "managed": true, "package": {"name": "dga"}})
        );
        assert_eq!(
            router["processors"][0]["pipeline"]["name"],
            "2.3.7-ml_dga_inference_pipeline"
        );
        assert!(t.s.models().contains_key("dga_1611725_2.0"));
        assert!(t.s.fleet_saved_objects("ml-module").contains_key("dga"));
        // Enrichment through the package's pipelines reads the model's own results_field.
        let (st, sim) = t
            .es(
                Method::POST,
                "/_ingest/pipeline/2.3.7-ml_dga_ingest_pipeline/_simulate",
                Some(json!({"docs": [{"_source": dns_doc("kq3v9z7xw1p0.com")}]})),
            )
            .await;
        assert_eq!(st, 200, "{sim}");
        let out = &sim["docs"][0]["doc"]["_source"]["ml_is_dga"];
        assert!(out["malicious_prediction"].is_number(), "{kibana}: {sim}");
        assert_eq!(out["top_classes"].as_array().map(Vec::len), Some(1));

        // GET: installed, and the installed version where this Kibana version puts it.
        let (_, after) = t.info().await;
        let item = &after["item"];
        assert_eq!(item["status"], "installed");
        assert_eq!(item["installationInfo"]["version"], "2.3.7");
        assert_eq!(item["installationInfo"]["install_source"], "registry");
        if kibana.starts_with('8') {
            assert_eq!(item["savedObject"]["attributes"]["version"], "2.3.7");
        } else {
            assert!(item.get("savedObject").is_none(), "9.0 removed savedObject");
        }
        // Installing what is installed changes nothing and answers its assets.
        let (st, again) = t.install("2.3.7", Some(json!({}))).await;
        assert_eq!(st, 200);
        assert_eq!(ids(&again["items"]).len(), got.len());
        assert!(t.s.off_spec_requests().is_empty());
    }
}

#[tokio::test]
async fn the_route_shape_follows_the_kibana_version() {
    // 8.x still routes the deprecated `{pkgkey}` segment; 9.0 removed it (kibana PR #198434).
    let t = T::new(profile("8.8.0", "8.8.0", &["dga-1.1.0"])).await;
    let (st, v) = t
        .kb(Method::GET, "/api/fleet/epm/packages/dga-1.1.0", None)
        .await;
    assert_eq!((st, v["item"]["version"].clone()), (200, json!("1.1.0")));
    // Before 8.9 there is no installationInfo, only savedObject.
    let (st, res) = t.install("1.1.0", None).await;
    assert_eq!(st, 200, "{res}");
    assert_eq!(
        ids(&res["items"])
            .iter()
            .filter(|i| i.starts_with("security-rule:"))
            .count(),
        4,
        "0.x-1.x carry the four rules"
    );
    let (_, v) = t.info().await;
    assert!(v["item"].get("installationInfo").is_none());
    assert_eq!(v["item"]["savedObject"]["attributes"]["version"], "1.1.0");

    let t = T::new(profile("9.2.0", "9.2.0", &["dga-2.3.7"])).await;
    let (st, _) = t
        .kb(Method::GET, "/api/fleet/epm/packages/dga-2.3.7", None)
        .await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn the_kibana_constraint_acts_through_the_registry_search() {
    // 8.8 meets no 2.x/3.x constraint: the search finds nothing and Fleet says so (404).
    let t = T::new(profile("8.8.0", "8.8.0", &["dga-2.0.0", "dga-2.3.7"])).await;
    let (st, v) = t.install("2.0.0", None).await;
    assert_eq!(st, 404, "{v}");
    assert_eq!(v["message"], "[dga] package not found in registry");
    assert!(t.s.pipelines().is_empty());

    // 9.2: the newest compatible is 2.3.7; an older version is out-of-date without `force`.
    let t = T::new(profile(
        "9.2.0",
        "9.2.0",
        &["dga-2.2.0", "dga-2.3.7", "dga-3.0.0"],
    ))
    .await;
    let (st, v) = t.install("2.2.0", None).await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(
        v["message"],
        "dga-2.2.0 is out-of-date and cannot be installed or updated"
    );
    assert_eq!(
        t.install("2.2.0", Some(json!({"bogus": true}))).await.0,
        400,
        "unknown body key"
    );
    let (st, _) = t.install("2.2.0", Some(json!({"force": true}))).await;
    assert_eq!(st, 200);
    // A bump: the new version's pipelines in, the old ones kept, the model kept.
    let (st, _) = t.install("2.3.7", None).await;
    assert_eq!(st, 200);
    let p = t.s.pipelines();
    assert!(p.contains_key("2.3.7-ml_dga_ingest_pipeline"));
    assert!(
        p.contains_key("2.2.0-ml_dga_ingest_pipeline"),
        "top-level pipelines of the old version stay (kibana issue #115035)"
    );
    assert!(t.s.models().contains_key("dga_1611725_2.0"));
    assert_eq!(t.s.fleet_installed_version("dga").as_deref(), Some("2.3.7"));
    // 3.0.0 (^9.4.0) on 9.2: Kibana never checks the requested version's own constraint, so
    // it installs; GET shows the constraint for a client to check first.
    let (st, v) = t
        .kb(Method::GET, "/api/fleet/epm/packages/dga/3.0.0", None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["item"]["conditions"]["kibana"]["version"], "^9.4.0");
    assert_eq!(v["item"]["latestVersion"], "2.3.7");
    assert_eq!(t.install("3.0.0", None).await.0, 200);
}

#[tokio::test]
async fn the_registry_serves_search_info_and_archives() {
    let t = T::new(profile(
        "9.2.0",
        "9.2.0",
        &["dga-2.0.0", "dga-2.3.7", "dga-3.0.0"],
    ))
    .await;
    let base = t.s.fleet_registry_url();
    let (st, v) = t
        .send(
            &base,
            Method::GET,
            "/search?package=dga&prerelease=false&kibana.version=9.2.0",
            "",
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert_eq!(v[0]["version"], "2.3.7");
    assert_eq!(v[0]["download"], "/epr/dga/dga-2.3.7.zip");
    let (_, v) = t
        .send(&base, Method::GET, "/search?package=dga&all=true", "", None)
        .await;
    assert_eq!(v.as_array().map(Vec::len), Some(3));
    let (st, v) = t
        .send(&base, Method::GET, "/package/dga/3.0.0/", "", None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["conditions"]["kibana"]["version"], "^9.4.0");
    assert!(v["assets"].as_array().unwrap().contains(&json!(
        "/package/dga/3.0.0/elasticsearch/ml_model/dga_1611725_2.0.json"
    )));
    let zip =
        t.c.get(format!("{base}/epr/dga/dga-2.3.7.zip"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    assert_eq!(zip.to_vec(), t.s.fleet_package_zip("dga-2.3.7").unwrap());
}

#[tokio::test]
async fn upload_needs_no_registry_and_an_unreachable_registry_is_told() {
    let t = T::new(profile("8.17.0", "8.17.0", &["dga-2.3.7"])).await;
    t.s.set_fleet_registry_reachable(false);
    let (st, v) = t.info().await;
    assert_eq!(st, 404);
    assert_eq!(
        v["message"],
        "[dga] package not installed or found in registry"
    );
    let (st, v) = t.install("2.3.7", None).await;
    assert_eq!(st, 404);
    assert_eq!(v["message"], "[dga] package not found in registry");
    assert!(t.s.pipelines().is_empty(), "no half install");

    let zip = t.s.fleet_package_zip("2.3.7").unwrap();
    let kb = t.s.kibana_url();
    let (st, v) = t
        .send(
            &kb,
            Method::POST,
            "/api/fleet/epm/packages",
            "application/json",
            Some(zip.clone()),
        )
        .await;
    assert_eq!(st, 415, "{v}");
    let (st, v) = t
        .send(
            &kb,
            Method::POST,
            "/api/fleet/epm/packages",
            "application/zip",
            Some(zip.clone()),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["_meta"]["install_source"], "upload");
    assert_eq!(
        v["response"], v["items"],
        "8.x upload repeats items as response"
    );
    assert!(
        t.s.pipelines()
            .contains_key("2.3.7-ml_dga_inference_pipeline")
    );
    let (_, v) = t.info().await;
    assert_eq!(v["item"]["installationInfo"]["install_source"], "upload");
    // One upload per 10 s from 8.15 (kibana PR #184036).
    let (st, v) = t
        .send(
            &kb,
            Method::POST,
            "/api/fleet/epm/packages",
            "application/zip",
            Some(zip),
        )
        .await;
    assert_eq!(st, 429, "{v}");
}

#[tokio::test]
async fn module_setup_creates_the_job_and_datafeed_and_reports_the_wait_for_data() {
    for (kibana, version, job) in [
        ("8.17.0", "2.3.7", "dga_high_sum_probability"),
        ("9.4.0", "3.0.0", "dga_high_sum_probability_ea"),
    ] {
        let t = T::new(profile(kibana, "9.2.0", &[&format!("dga-{version}")])).await;
        let setup =
            json!({"prefix": "", "indexPatternName": "logs-*,packetbeat-*", "startDatafeed": true});
        let (st, v) = t
            .kb(
                Method::POST,
                "/api/ml/modules/setup/dga",
                Some(setup.clone()),
            )
            .await;
        assert_eq!(
            (st, v["message"].clone()),
            (404, json!("Module with the id \"dga\" not found"))
        );
        assert_eq!(t.install(version, None).await.0, 200);
        let (st, m) = t
            .kb(Method::GET, "/api/ml/modules/get_module/dga", None)
            .await;
        assert_eq!(st, 200);
        assert_eq!(m["jobs"][0]["id"], job);
        let (st, v) = t
            .kb(
                Method::POST,
                "/api/ml/modules/setup/dga",
                Some(json!({"nope": 1})),
            )
            .await;
        assert_eq!(st, 400, "{v}");

        let (st, v) = t
            .kb(
                Method::POST,
                "/api/ml/modules/setup/dga",
                Some(setup.clone()),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["jobs"], json!([{"id": job, "success": true}]));
        let df = &v["datafeeds"][0];
        assert_eq!(df["id"], format!("datafeed-{job}"));
        assert_eq!(df["success"], true);
        assert_eq!(df["started"], false, "no DNS data yet");
        assert_eq!(df["error"]["error"]["type"], "status_exception", "{v}");
        assert_eq!(v["kibana"], json!({}));
        let (_, stats) = t
            .es(
                Method::GET,
                &format!("/_ml/anomaly_detectors/{job}/_stats"),
                None,
            )
            .await;
        assert_eq!(
            stats["jobs"][0]["state"], "opened",
            "setup opens the job first"
        );
        let jobs = t.s.jobs();
        assert_eq!(jobs[job]["custom_settings"]["created_by"], "ml-module-dga");
        assert_eq!(
            t.s.datafeeds()[&format!("datafeed-{job}")]["indices"],
            json!(["logs-*", "packetbeat-*"])
        );
        // A second setup reports what already exists, per job and datafeed.
        let (st, v) = t
            .kb(Method::POST, "/api/ml/modules/setup/dga", Some(setup))
            .await;
        assert_eq!(st, 200);
        assert_eq!(v["jobs"][0]["success"], false);
        assert_eq!(
            v["jobs"][0]["error"]["error"]["type"],
            "resource_already_exists_exception"
        );
    }
}

#[tokio::test]
async fn uninstall_removes_what_install_created() {
    let t = T::new(profile("9.2.0", "9.2.0", &["dga-2.2.0", "dga-2.3.7"])).await;
    let (st, v) = t
        .kb(Method::DELETE, "/api/fleet/epm/packages/dga/2.3.7", None)
        .await;
    assert_eq!(
        (st, v["message"].clone()),
        (400, json!("dga is not installed"))
    );
    // An older version, then a bump: both versions' pipelines are Fleet's to remove.
    let force = Some(json!({"force": true}));
    assert_eq!(t.install("2.2.0", force).await.0, 200);
    assert_eq!(t.install("2.3.7", None).await.0, 200);
    assert_eq!(t.s.pipelines().len(), 4);
    let (st, v) = t
        .kb(Method::DELETE, "/api/fleet/epm/packages/dga/2.3.7", None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids(&v["items"]).len(), 6, "module, model, 2 x 2 pipelines");
    assert!(t.s.pipelines().is_empty());
    assert!(t.s.models().is_empty());
    assert!(t.s.fleet_saved_objects("ml-module").is_empty());
    assert_eq!(t.info().await.1["item"]["status"], "not_installed");
}

/// Kibana 7.10 to 8.8.1 installs an uploaded package only with an enterprise licence (or a
/// trial): 403 "Requires Enterprise license" (kibana PR #79653), removed in 8.8.2 (PR #159280).
#[tokio::test]
async fn upload_needs_an_enterprise_licence_before_8_8_2() {
    for (kibana, license, want) in [
        ("8.8.1", "platinum", 403),
        ("8.8.1", "trial", 200),
        ("8.8.1", "enterprise", 200),
        ("8.8.2", "platinum", 200),
        ("8.17.0", "basic", 200),
    ] {
        let t = T::new(profile(kibana, kibana, &["dga-1.1.0"])).await;
        t.s.set_license(license);
        let zip = t.s.fleet_package_zip("1.1.0").unwrap();
        let kb = t.s.kibana_url();
        let (st, v) = t
            .send(
                &kb,
                Method::POST,
                "/api/fleet/epm/packages",
                "application/zip",
                Some(zip),
            )
            .await;
        assert_eq!(st, want, "{kibana} {license}: {v}");
        if want == 403 {
            assert_eq!(
                v,
                json!({"statusCode": 403, "error": "Forbidden", "message": "Requires Enterprise license"})
            );
            assert!(t.s.pipelines().is_empty(), "nothing installed");
        }
    }
}

/// `getFileHandler` serves the installed version's files (the 1.x package's rules), and
/// `installed_kibana` names saved object types.
#[tokio::test]
async fn package_files_are_served_and_installed_kibana_names_saved_object_types() {
    let t = T::new(profile("8.8.0", "8.8.0", &["dga-1.1.0"])).await;
    let (st, v) = t.install("1.1.0", None).await;
    assert_eq!(st, 200, "{v}");
    let (_, info) = t.info().await;
    let refs = info["item"]["savedObject"]["attributes"]["installed_kibana"]
        .as_array()
        .unwrap()
        .clone();
    let types: std::collections::BTreeSet<&str> =
        refs.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["ml-module", "security-rule"].into_iter().collect(),
        "{refs:?}"
    );
    let rule_id = refs.iter().find(|r| r["type"] == "security-rule").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, v) = t
        .kb(
            Method::GET,
            &format!("/api/fleet/epm/packages/dga/1.1.0/kibana/security_rule/{rule_id}.json"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["type"], "security-rule");
    assert_eq!(v["attributes"]["rule_id"], rule_id.as_str());
    let (st, _) = t
        .kb(
            Method::GET,
            "/api/fleet/epm/packages/dga/1.1.0/kibana/security_rule/nope.json",
            None,
        )
        .await;
    assert_eq!(st, 404);
}
