//! Integration tests of the stand-in over real HTTP.

use dga_standin::model::{ModelEncoding, ModelSpec, write_model_json};
use dga_standin::{Auth, Fault, FaultAction, Service, Standin, StandinConfig};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

struct T {
    s: Standin,
    c: Client,
}

impl T {
    async fn new() -> T {
        Self::with(StandinConfig::default()).await
    }
    async fn with(cfg: StandinConfig) -> T {
        let s = Standin::start(cfg).await.unwrap();
        T {
            s,
            c: Client::new(),
        }
    }
    async fn raw(
        &self,
        base: &str,
        m: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut rb = self
            .c
            .request(m, format!("{base}{path}"))
            .basic_auth("elastic", Some("changeme"))
            .header("kbn-xsrf", "true");
        if let Some(b) = body {
            rb = rb.header("content-type", "application/json").body(b);
        }
        let r = rb.send().await.unwrap();
        let st = r.status();
        let h = r.headers().clone();
        let bytes = r.bytes().await.unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (st, h, v)
    }
    async fn es(&self, m: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (s, _, v) = self
            .raw(
                &self.s.es_url(),
                m,
                path,
                body.map(|b| b.to_string().into_bytes()),
            )
            .await;
        (s.as_u16(), v)
    }
    async fn kb(&self, m: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (s, _, v) = self
            .raw(
                &self.s.kibana_url(),
                m,
                path,
                body.map(|b| b.to_string().into_bytes()),
            )
            .await;
        (s.as_u16(), v)
    }
}

fn model_body(id: &str, bytes: usize, enc: ModelEncoding) -> Vec<u8> {
    let mut out = Vec::new();
    write_model_json(&ModelSpec::new(id, bytes, 7), enc, &mut out).unwrap();
    out
}

#[tokio::test]
async fn info_license_and_standin_header() {
    let t = T::new().await;
    let (st, h, v) = t.raw(&t.s.es_url(), Method::GET, "/", None).await;
    assert_eq!(st, 200);
    assert_eq!(h["x-standin"], "dga-standin");
    assert_eq!(v["version"]["number"], "8.17.0");
    assert_eq!(v["version"]["build_flavor"], "default");
    assert_eq!(v["tagline"], "You Know, for Search");
    let (_, v) = t.es(Method::GET, "/_license", None).await;
    assert_eq!(v["license"]["type"], "platinum");
    assert_eq!(v["license"]["status"], "active");
    t.s.set_license("basic");
    let (_, v) = t.es(Method::GET, "/_license", None).await;
    assert_eq!(v["license"]["type"], "basic");
    assert!(t.s.off_spec_requests().is_empty());
}

#[tokio::test]
async fn spec_rejections_are_counted() {
    let t = T::new().await;
    let (s, v) = t.es(Method::GET, "/_no_such_api/x", None).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["type"], "illegal_argument_exception");
    assert_eq!(v["status"], 400);
    let (s, v) = t
        .es(Method::POST, "/_ml/trained_models/x", Some(json!({})))
        .await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["reason"]
            .as_str()
            .unwrap()
            .contains("Incorrect HTTP method")
    );
    let (s, v) = t.es(Method::GET, "/_ml/trained_models/x?foo=1", None).await;
    assert_eq!(s, 400);
    assert_eq!(
        v["error"]["root_cause"][0]["reason"],
        "request [/_ml/trained_models/x] contains unrecognized parameter: [foo]"
    );
    let (s, _) = t.es(Method::PUT, "/_ingest/pipeline/p", None).await;
    assert_eq!(s, 400);
    // known request with a common param passes
    let (s, _) = t
        .es(Method::GET, "/_ml/trained_models?pretty&size=5", None)
        .await;
    assert_eq!(s, 200);
    let off = t.s.off_spec_requests();
    assert_eq!(off.len(), 4, "{off:?}");
    assert!(
        off.iter()
            .all(|r| r.service == Service::Es && r.status == 400)
    );
    assert_eq!(off[2].api.as_deref(), Some("ml.get_trained_models"));
    // Kibana: unknown path, unknown query param
    let (s, _) = t.kb(Method::GET, "/api/nope", None).await;
    assert_eq!(s, 404);
    let (s, v) = t
        .kb(Method::GET, "/api/detection_engine/rules?foo=1", None)
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["message"],
        "[request query.foo]: definition for this key is missing"
    );
    assert_eq!(t.s.off_spec_requests().len(), 6);
    t.s.clear_requests();
    assert!(t.s.requests().is_empty());
}

#[tokio::test]
async fn auth_is_enforced() {
    let cfg = StandinConfig {
        auth: Auth {
            basic: vec![("elastic".into(), "changeme".into())],
            api_keys: vec!["aWQ6a2V5".into()],
            bearer: vec![],
        },
        ..Default::default()
    };
    let t = T::with(cfg).await;
    let r = t.c.get(t.s.es_url()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "security_exception");
    let r =
        t.c.get(t.s.es_url())
            .basic_auth("elastic", Some("wrong"))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 401);
    let r =
        t.c.get(t.s.es_url())
            .header("authorization", "ApiKey aWQ6a2V5")
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    let r =
        t.c.get(format!("{}/api/status", t.s.kibana_url()))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["statusCode"], 401);
    assert_eq!(v["error"], "Unauthorized");
}

#[tokio::test]
async fn trained_model_lifecycle() {
    let t = T::new().await;
    let body = model_body("dga_1", 200_000, ModelEncoding::Plain);
    let (s, _, v) = t
        .raw(
            &t.s.es_url(),
            Method::PUT,
            "/_ml/trained_models/dga_1",
            Some(body.clone()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model_id"], "dga_1");
    assert_eq!(v["model_type"], "tree_ensemble");
    assert_eq!(v["license_level"], "platinum");
    assert!(v.get("definition").is_none());
    assert!(t.s.model_definition_len("dga_1").unwrap() > 150_000);
    // duplicate
    let (s, _, v) = t
        .raw(
            &t.s.es_url(),
            Method::PUT,
            "/_ml/trained_models/dga_1",
            Some(body),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["type"], "resource_already_exists_exception");
    assert_eq!(
        v["error"]["reason"],
        "Trained machine learning model [dga_1] already exists"
    );
    // compressed
    let body = model_body("dga_2", 100_000, ModelEncoding::Compressed);
    let (s, _, v) = t
        .raw(
            &t.s.es_url(),
            Method::PUT,
            "/_ml/trained_models/dga_2",
            Some(body),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // bad inputs
    let (s, v) = t.es(Method::PUT, "/_ml/trained_models/bad", Some(json!({"input": {"field_names": ["a"]}, "inference_config": {"classification": {}}, "compressed_definition": "!!notbase64"}))).await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = t.es(Method::PUT, "/_ml/trained_models/bad", Some(json!({"input": {"field_names": []}, "inference_config": {}, "definition": {"trained_model": {}}}))).await;
    assert_eq!(s, 400);
    let (s, _) = t
        .es(
            Method::PUT,
            "/_ml/trained_models/bad",
            Some(json!({"input": {"field_names": ["a"]}, "inference_config": {}})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = t.es(Method::PUT, "/_ml/trained_models/bad", Some(json!({"input": {"field_names": ["a"]}, "inference_config": {}, "definition": {"x": 1}}))).await;
    assert_eq!(s, 400);
    // GET
    let (s, v) = t.es(Method::GET, "/_ml/trained_models/dga_1", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["count"], 1);
    assert_eq!(v["trained_model_configs"][0]["model_id"], "dga_1");
    let (_, v) = t
        .es(
            Method::GET,
            "/_ml/trained_models/dga_1?exclude_generated=true",
            None,
        )
        .await;
    assert!(v["trained_model_configs"][0].get("created_by").is_none());
    let (_, v) = t.es(Method::GET, "/_ml/trained_models/dga*", None).await;
    assert_eq!(v["count"], 2);
    let (_, v) = t.es(Method::GET, "/_ml/trained_models/_all", None).await;
    assert_eq!(v["count"], 2);
    let (_, v) = t
        .es(Method::GET, "/_ml/trained_models/dga_1,dga_2", None)
        .await;
    assert_eq!(v["count"], 2);
    let (s, v) = t.es(Method::GET, "/_ml/trained_models/nope", None).await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["type"], "resource_not_found_exception");
    assert_eq!(t.s.models().len(), 2);
    // referenced by a pipeline (nested in on_failure) -> 409
    let pipe = json!({"processors": [{"set": {"field": "a", "value": 1}}], "on_failure": [{"inference": {"model_id": "dga_1", "target_field": "x"}}]});
    let (s, v) = t.es(Method::PUT, "/_ingest/pipeline/p1", Some(pipe)).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = t
        .es(Method::DELETE, "/_ml/trained_models/dga_1", None)
        .await;
    assert_eq!(s, 409);
    assert_eq!(v["error"]["type"], "status_exception");
    assert!(v["error"]["reason"].as_str().unwrap().contains("use force"));
    let (s, _) = t
        .es(Method::DELETE, "/_ml/trained_models/dga_1?force=true", None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = t
        .es(Method::DELETE, "/_ml/trained_models/dga_1", None)
        .await;
    assert_eq!(s, 404);
    // inference processor naming a missing model is refused at PUT
    let (s, v) = t
        .es(
            Method::PUT,
            "/_ingest/pipeline/p2",
            Some(json!({"processors": [{"inference": {"model_id": "missing"}}]})),
        )
        .await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["type"], "resource_not_found_exception");
    assert!(t.s.off_spec_requests().is_empty());
    // writes are countable
    let writes = t.s.requests().iter().filter(|r| r.is_write()).count();
    assert!(writes >= 10);
}

#[tokio::test]
async fn pipelines_and_scripts_crud() {
    let t = T::new().await;
    let (s, v) = t
        .es(
            Method::PUT,
            "/_scripts/dga_ngrams_create",
            Some(json!({"script": {"lang": "painless", "source": "ctx.f = 1"}})),
        )
        .await;
    assert_eq!((s, &v), (200, &json!({"acknowledged": true})));
    let (s, v) = t.es(Method::GET, "/_scripts/dga_ngrams_create", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"_id": "dga_ngrams_create", "found": true, "script": {"lang": "painless", "source": "ctx.f = 1"}})
    );
    let (s, v) = t.es(Method::GET, "/_scripts/missing", None).await;
    assert_eq!((s, v), (404, json!({"_id": "missing", "found": false})));
    let (s, _) = t
        .es(
            Method::PUT,
            "/_scripts/x",
            Some(json!({"script": {"source": "x"}})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = t
        .es(Method::DELETE, "/_scripts/dga_ngrams_create", None)
        .await;
    assert_eq!(s, 200);
    let (s, v) = t
        .es(Method::DELETE, "/_scripts/dga_ngrams_create", None)
        .await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["type"], "resource_not_found_exception");

    let p = json!({"description": "d", "_meta": {"managed_by": "dga-operator"}, "version": 3, "processors": [{"pipeline": {"name": "not_there_yet"}}]});
    let (s, _) = t
        .es(
            Method::PUT,
            "/_ingest/pipeline/dns_enrich_pipeline",
            Some(p.clone()),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = t
        .es(Method::GET, "/_ingest/pipeline/dns_enrich_pipeline", None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["dns_enrich_pipeline"], p);
    let (_, v) = t.es(Method::GET, "/_ingest/pipeline/dns*", None).await;
    assert_eq!(v.as_object().unwrap().len(), 1);
    let (_, v) = t.es(Method::GET, "/_ingest/pipeline", None).await;
    assert_eq!(v.as_object().unwrap().len(), 1);
    let (s, v) = t.es(Method::GET, "/_ingest/pipeline/none", None).await;
    assert_eq!((s, v), (404, json!({})));
    t.s.put_pipeline("hand", json!({"processors": []}));
    assert_eq!(t.s.pipelines().len(), 2);
    let (s, _) = t.es(Method::DELETE, "/_ingest/pipeline/hand", None).await;
    assert_eq!(s, 200);
    let (s, _) = t.es(Method::DELETE, "/_ingest/pipeline/hand", None).await;
    assert_eq!(s, 404);
    t.s.put_script("s1", json!({"script": {"lang": "painless", "source": "1"}}));
    assert_eq!(t.s.scripts()["s1"]["source"], "1");
}

#[tokio::test]
async fn simulate_runs_modelled_processors() {
    let t = T::new().await;
    let body = model_body("dga_sim", 50_000, ModelEncoding::Plain);
    let (s, _, _) = t
        .raw(
            &t.s.es_url(),
            Method::PUT,
            "/_ml/trained_models/dga_sim",
            Some(body),
        )
        .await;
    assert_eq!(s, 200);
    let inner = json!({"processors": [
        {"script": {"id": "dga_ngrams_create", "tag": "feat"}},
        {"inference": {"model_id": "dga_sim", "target_field": "ml_is_dga", "inference_config": {"classification": {"num_top_classes": 1}}}},
        {"rename": {"field": "a", "target_field": "b"}},
        {"remove": {"field": "tmp", "ignore_missing": true}}
    ]});
    t.es(Method::PUT, "/_ingest/pipeline/inner", Some(inner))
        .await;
    let router = json!({"processors": [
        {"set": {"field": "routed", "value": true}},
        {"pipeline": {"name": "inner", "if": "ctx.type=='dns' && ctx.dns.question.type != 'PTR'"}}
    ], "on_failure": [{"set": {"field": "error.message", "value": "failed"}}]});
    t.es(Method::PUT, "/_ingest/pipeline/router", Some(router))
        .await;
    let docs = json!({"docs": [
        {"_source": {"type": "dns", "a": 1, "dns": {"question": {"type": "A", "name": "xjqkw3vbz.biz"}}}},
        {"_source": {"type": "dns", "dns": {"question": {"type": "PTR"}}}}
    ]});
    let (s, v) = t
        .es(
            Method::POST,
            "/_ingest/pipeline/router/_simulate",
            Some(docs),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let d0 = &v["docs"][0];
    assert_eq!(d0["doc"]["_source"]["routed"], true, "{v}");
    assert_eq!(d0["doc"]["_source"]["b"], 1);
    assert!(d0["doc"]["_source"]["ml_is_dga"].is_object(), "{v}");
    assert!(d0["doc"]["_ingest"]["timestamp"].is_string());
    assert_eq!(
        d0["_standin_skipped"],
        json!(["script(id=dga_ngrams_create,tag=feat)"])
    );
    let d1 = &v["docs"][1];
    assert!(d1["doc"]["_source"].get("ml_is_dga").is_none());
    assert!(d1.get("_standin_skipped").is_none());
    // inline pipeline, failing processor -> on_failure
    let (s, v) = t
        .es(Method::POST, "/_ingest/pipeline/_simulate", Some(json!({"pipeline": {"processors": [{"rename": {"field": "nope", "target_field": "x"}}], "on_failure": [{"set": {"field": "error.message", "value": "bad"}}]}, "docs": [{"_source": {}}]})))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["docs"][0]["doc"]["_source"]["error"]["message"], "bad");
}

fn rule(rule_id: &str, tag: &str) -> Value {
    json!({"rule_id": rule_id, "type": "query", "language": "kuery", "name": format!("DGA {rule_id}"), "description": "d",
           "risk_score": 21, "severity": "low", "query": "ml_is_dga.malicious_prediction:1", "index": ["logs-*"], "tags": [tag]})
}

#[tokio::test]
async fn kibana_rules() {
    let t = T::new().await;
    let (s, v) = t.kb(Method::GET, "/api/status", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["status"]["overall"]["level"], "available");
    let (s, v) = t
        .kb(
            Method::POST,
            "/api/detection_engine/rules",
            Some(rule("r1", "ML-DGA")),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["enabled"], true);
    assert_eq!(v["revision"], 0);
    assert_eq!(v["created_by"], "elastic");
    assert_eq!(
        t.s.requests().last().unwrap().principal.as_deref(),
        Some("elastic")
    );
    let id = v["id"].as_str().unwrap().to_string();
    let (s, v) = t
        .kb(
            Method::POST,
            "/api/detection_engine/rules",
            Some(rule("r1", "ML-DGA")),
        )
        .await;
    assert_eq!(s, 409);
    assert_eq!(
        v,
        json!({"status_code": 409, "message": "rule_id: \"r1\" already exists"})
    );
    t.kb(
        Method::POST,
        "/api/detection_engine/rules",
        Some(rule("r2", "other")),
    )
    .await;
    t.kb(
        Method::POST,
        "/s/sec/api/detection_engine/rules",
        Some(rule("r3", "ML-DGA")),
    )
    .await;
    let (s, v) = t
        .kb(Method::GET, "/api/detection_engine/rules?rule_id=zz", None)
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        v,
        json!({"status_code": 404, "message": "rule_id: \"zz\" not found"})
    );
    let (s, v) = t
        .kb(
            Method::GET,
            &format!("/api/detection_engine/rules?id={id}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["rule_id"], "r1");
    let (s, v) = t.kb(Method::GET, "/api/detection_engine/rules/_find?filter=alert.attributes.tags:%22ML-DGA%22&per_page=100", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["total"], 1);
    assert_eq!(v["data"][0]["rule_id"], "r1");
    assert_eq!(t.s.rules("sec").len(), 1);
    // patch + put bump revision
    let (s, v) = t
        .kb(
            Method::PATCH,
            "/api/detection_engine/rules",
            Some(json!({"rule_id": "r1", "enabled": false})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["revision"].as_i64(),
            v["enabled"].as_bool(),
            v["name"].as_str()
        ),
        (Some(1), Some(false), Some("DGA r1"))
    );
    let (s, v) = t
        .kb(
            Method::PUT,
            "/api/detection_engine/rules",
            Some(rule("r1", "ML-DGA")),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["revision"], 2);
    assert_eq!(v["id"], json!(id));
    // xsrf missing
    let r =
        t.c.post(format!("{}/api/detection_engine/rules", t.s.kibana_url()))
            .basic_auth("elastic", Some("changeme"))
            .json(&rule("r9", "x"))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 400);
    // invalid body
    let mut bad = rule("r9", "x");
    bad["severity"] = json!("huge");
    let (s, v) = t
        .kb(Method::POST, "/api/detection_engine/rules", Some(bad))
        .await;
    assert_eq!(s, 400);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("[request body]: severity"),
        "{v}"
    );
    let off = t.s.off_spec_requests();
    assert_eq!(off.len(), 2, "{off:?}");
    // bulk delete by query and by ids
    let (s, v) = t
        .kb(
            Method::POST,
            "/api/detection_engine/rules/_bulk_action",
            Some(json!({"action": "delete", "query": "alert.attributes.tags:\"other\""})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["attributes"]["summary"]["succeeded"], 1);
    let (s, v) = t
        .kb(
            Method::POST,
            "/api/detection_engine/rules/_bulk_action",
            Some(json!({"action": "disable", "ids": [id]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = t
        .kb(
            Method::DELETE,
            "/api/detection_engine/rules?rule_id=r1",
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(t.s.rules("default").is_empty());
}

#[tokio::test]
async fn faults_status_cut_close_delay() {
    let t = T::new().await;
    t.s.add_fault(Fault {
        service: Some(Service::Es),
        method: Some("GET".into()),
        path_regex: "^/_license$".into(),
        nth: 2,
        times: 1,
        action: FaultAction::Status {
            code: 503,
            retry_after: Some(7),
            body: None,
        },
    });
    let (s, _, _) = t.raw(&t.s.es_url(), Method::GET, "/_license", None).await;
    assert_eq!(s, 200);
    let (s, h, v) = t.raw(&t.s.es_url(), Method::GET, "/_license", None).await;
    assert_eq!(s, 503);
    assert_eq!(h["retry-after"], "7");
    assert_eq!(v["status"], 503);
    let (s, _, _) = t.raw(&t.s.es_url(), Method::GET, "/_license", None).await;
    assert_eq!(s, 200);
    assert_eq!(
        t.s.requests().iter().filter(|r| r.fault.is_some()).count(),
        1
    );

    t.s.publish_release(
        "elastic/detection-rules",
        "ML-DGA-20201129-25",
        vec![("ML-DGA-20201129-25.zip".into(), vec![7u8; 100_000])],
    );
    t.s.add_fault(Fault::new("^/download/", FaultAction::CutBody));
    let url = format!(
        "{}/download/elastic/detection-rules/ML-DGA-20201129-25/ML-DGA-20201129-25.zip",
        t.s.github_url()
    );
    let r = t.c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "cut body must fail");
    let r = t.c.get(&url).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 100_000);

    t.s.add_fault(Fault::new("^/$", FaultAction::Close));
    assert!(
        t.c.get(t.s.es_url())
            .basic_auth("elastic", Some("changeme"))
            .send()
            .await
            .is_err()
    );
    t.s.clear_faults();
    t.s.add_fault(Fault::new(
        "^/$",
        FaultAction::Delay(Duration::from_millis(300)),
    ));
    let t0 = std::time::Instant::now();
    let (s, _) = t.es(Method::GET, "/", None).await;
    assert_eq!(s, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn github_release_and_downloads() {
    let t = T::new().await;
    let dir = std::env::temp_dir().join(format!("dga-standin-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let zip = dir.join("ML-DGA-20201129-25.zip");
    let data: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&zip, &data).unwrap();
    t.s.publish_release_files(
        "elastic/detection-rules",
        "ML-DGA-20201129-25",
        vec![
            ("ML-DGA-20201129-25.zip".into(), zip.clone()),
            ("manifest-ML-DGA-20201129-25.json".into(), zip.clone()),
        ],
    )
    .unwrap();
    let r =
        t.c.get(format!(
            "{}/repos/elastic/detection-rules/releases/tags/ML-DGA-20201129-25",
            t.s.github_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tag_name"], "ML-DGA-20201129-25");
    assert_eq!(v["draft"], false);
    let a = &v["assets"][0];
    assert_eq!(a["name"], "ML-DGA-20201129-25.zip");
    assert_eq!(a["size"], 1_000_003);
    assert_eq!(a["content_type"], "application/zip");
    let r =
        t.c.get(a["browser_download_url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
    assert_eq!(r.content_length(), Some(1_000_003));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);
    let r =
        t.c.get(a["url"].as_str().unwrap())
            .header("accept", "application/octet-stream")
            .send()
            .await
            .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 1_000_003);
    let r =
        t.c.get(format!(
            "{}/repos/elastic/detection-rules/releases/tags/nope",
            t.s.github_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["message"], "Not Found");
    t.s.publish_file("x.zip", zip.clone()).unwrap();
    let r =
        t.c.get(format!("{}/mirror/x.zip", t.s.github_url()))
            .send()
            .await
            .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 1_000_003);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn interceptor_and_down() {
    let t = T::new().await;
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    t.s.set_interceptor(Some(Arc::new(move |_rec| {
        let n = n2.clone();
        Box::pin(async move {
            n.fetch_add(1, Ordering::SeqCst);
        })
    })));
    t.es(Method::GET, "/", None).await;
    t.kb(Method::GET, "/api/status", None).await;
    assert_eq!(n.load(Ordering::SeqCst), 2);
    t.s.set_interceptor(None);
    t.s.set_es_down(true);
    let fresh = Client::new();
    assert!(fresh.get(t.s.es_url()).send().await.is_err());
    t.s.set_es_down(false);
    let (s, _) = t.es(Method::GET, "/", None).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn ml_jobs_and_templates() {
    let t = T::new().await;
    let job = json!({"analysis_config": {"bucket_span": "15m", "detectors": [{"function": "high_sum", "field_name": "ml_is_dga.malicious_probability", "over_field_name": "source.ip"}]}, "data_description": {"time_field": "@timestamp"}});
    let (s, v) = t
        .es(
            Method::PUT,
            "/_ml/anomaly_detectors/dga_high_sum_probability",
            Some(job.clone()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = t
        .es(
            Method::PUT,
            "/_ml/anomaly_detectors/dga_high_sum_probability",
            Some(job),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["type"], "resource_already_exists_exception");
    let (s, _) = t
        .es(
            Method::PUT,
            "/_ml/datafeeds/datafeed-dga",
            Some(json!({"job_id": "dga_high_sum_probability", "indices": ["logs-*"]})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = t
        .es(
            Method::POST,
            "/_ml/anomaly_detectors/dga_high_sum_probability/_open",
            None,
        )
        .await;
    assert_eq!(s, 200);
    // DNS data: an index the datafeed's pattern matches (without one the start is refused).
    t.s.put_index_settings("logs-dns-1", json!({}));
    let (s, _) = t
        .es(Method::POST, "/_ml/datafeeds/datafeed-dga/_start", None)
        .await;
    assert_eq!(s, 200);
    let (_, v) = t
        .es(Method::GET, "/_ml/datafeeds/datafeed-dga/_stats", None)
        .await;
    assert_eq!(v["datafeeds"][0]["state"], "started");
    let (s, _) = t
        .es(
            Method::DELETE,
            "/_ml/anomaly_detectors/dga_high_sum_probability",
            None,
        )
        .await;
    assert_eq!(s, 409);
    let (s, _) = t.es(Method::GET, "/_ml/anomaly_detectors/nope", None).await;
    assert_eq!(s, 404);
    t.es(Method::POST, "/_ml/datafeeds/datafeed-dga/_stop", None)
        .await;
    t.es(
        Method::POST,
        "/_ml/anomaly_detectors/dga_high_sum_probability/_close",
        None,
    )
    .await;
    let (s, _) = t
        .es(Method::DELETE, "/_ml/datafeeds/datafeed-dga", None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = t
        .es(
            Method::DELETE,
            "/_ml/anomaly_detectors/dga_high_sum_probability",
            None,
        )
        .await;
    assert_eq!(s, 200);

    let (s, _) = t.es(Method::PUT, "/_index_template/logs-dns", Some(json!({"index_patterns": ["logs-dns-*"], "template": {"settings": {"index.default_pipeline": "p"}}}))).await;
    assert_eq!(s, 200);
    let (_, v) = t.es(Method::GET, "/_index_template/logs-dns", None).await;
    assert_eq!(v["index_templates"][0]["name"], "logs-dns");
    t.s.put_index_settings("packetbeat-1", json!({}));
    let (s, _) = t
        .es(
            Method::PUT,
            "/packetbeat-1/_settings",
            Some(json!({"index": {"default_pipeline": "dns_enrich_pipeline"}})),
        )
        .await;
    assert_eq!(s, 200);
    let (_, v) = t.es(Method::GET, "/packetbeat-1/_settings", None).await;
    assert_eq!(
        v["packetbeat-1"]["settings"]["index"]["default_pipeline"],
        "dns_enrich_pipeline"
    );
    assert_eq!(
        t.s.index_settings()["packetbeat-1"]["index.default_pipeline"],
        "dns_enrich_pipeline"
    );
    assert!(
        t.s.off_spec_requests().is_empty(),
        "{:?}",
        t.s.off_spec_requests()
    );
}

/// Large-body throughput: `cargo test -p dga-standin --test standin -- --ignored big_model --nocapture`.
#[tokio::test]
#[ignore]
async fn big_model_put() {
    let t = T::new().await;
    let mb: usize = std::env::var("STANDIN_BIG_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(90);
    let t0 = std::time::Instant::now();
    let body = model_body("dga_big", mb * 1_000_000, ModelEncoding::Plain);
    eprintln!("generated {} bytes in {:?}", body.len(), t0.elapsed());
    let t1 = std::time::Instant::now();
    let (s, _, v) = t
        .raw(
            &t.s.es_url(),
            Method::PUT,
            "/_ml/trained_models/dga_big",
            Some(body),
        )
        .await;
    eprintln!("PUT took {:?}", t1.elapsed());
    assert_eq!(s, 200, "{v}");
    let t2 = std::time::Instant::now();
    let (s, _) = t.es(Method::GET, "/_ml/trained_models/dga_big", None).await;
    assert_eq!(s, 200);
    eprintln!("GET took {:?}", t2.elapsed());
}

#[tokio::test]
async fn model_put_field_rules_and_gzip_bodies() {
    let t = T::new().await;
    let base = json!({"input": {"field_names": ["a"]}, "inference_config": {"classification": {}}, "definition": {"trained_model": {"tree": {}}}});
    let mut b = base.clone();
    b["created_by"] = json!("api_user");
    let (s, v) = t.es(Method::PUT, "/_ml/trained_models/m1", Some(b)).await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["reason"]
            .as_str()
            .unwrap()
            .contains("illegal to set [created_by]"),
        "{v}"
    );
    let mut b = base.clone();
    b["foo"] = json!(1);
    let (s, v) = t.es(Method::PUT, "/_ml/trained_models/m1", Some(b)).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["type"], "x_content_parse_exception");
    // gzip-compressed request body
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(base.to_string().as_bytes()).unwrap();
    let r =
        t.c.put(format!("{}/_ml/trained_models/m1", t.s.es_url()))
            .basic_auth("elastic", Some("changeme"))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(gz.finish().unwrap())
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    assert!(t.s.models().contains_key("m1"));
}

#[test]
fn standin_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Standin>();
}

#[test]
fn is_write_and_fault_json() {
    use dga_standin::RequestRecord;
    let rec = |m: &str, p: &str| RequestRecord {
        seq: 1,
        service: Service::Es,
        method: m.into(),
        path: p.into(),
        query: String::new(),
        status: 200,
        off_spec: None,
        api: None,
        body_len: 0,
        fault: None,
        principal: None,
    };
    assert!(!rec("GET", "/_ml/trained_models").is_write());
    assert!(!rec("POST", "/_ingest/pipeline/x/_simulate").is_write());
    assert!(!rec("POST", "/_ingest/pipeline/_simulate").is_write());
    assert!(rec("PUT", "/_ingest/pipeline/x").is_write());
    assert!(rec("POST", "/api/detection_engine/rules").is_write());
    assert!(rec("POST", "/api/detection_engine/rules/_bulk_action").is_write());
    assert!(rec("DELETE", "/_scripts/x").is_write());
    let f: Fault =
        serde_json::from_str(r#"{"path_regex":"^/$","action":{"Status":{"code":503}}}"#).unwrap();
    assert_eq!((f.nth, f.times), (1, 1));
    let f: Fault = serde_json::from_str(
        r#"{"service":"Es","method":"PUT","path_regex":"x","nth":2,"times":3,"action":"CutBody"}"#,
    )
    .unwrap();
    assert_eq!(f.action, FaultAction::CutBody);
}

#[tokio::test]
async fn kibana_import_rules() {
    let t = T::new().await;
    let nd = format!(
        "{}\n{}\n{{\"exported_count\":2}}\n",
        rule("i1", "ML-DGA"),
        rule("i2", "ML-DGA")
    );
    let body = format!(
        "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"rules.ndjson\"\r\nContent-Type: application/ndjson\r\n\r\n{nd}\r\n--XyZ--\r\n"
    );
    let send = |q: &'static str, body: String| {
        t.c.post(format!(
            "{}/api/detection_engine/rules/_import{q}",
            t.s.kibana_url()
        ))
        .basic_auth("elastic", Some("changeme"))
        .header("kbn-xsrf", "true")
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(body)
        .send()
    };
    let v: Value = send("", body.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(
        (
            v["success"].as_bool(),
            v["success_count"].as_u64(),
            v["rules_count"].as_u64()
        ),
        (Some(true), Some(2), Some(2)),
        "{v}"
    );
    let v: Value = send("", body.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(v["success"], false);
    assert_eq!(v["errors"][0]["error"]["status_code"], 409);
    let v: Value = send("?overwrite=true", body)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["success_count"], 2, "{v}");
    assert_eq!(t.s.rules("default").len(), 2);
    assert_eq!(t.s.rules("default")[0]["revision"], 1);
    assert!(t.s.off_spec_requests().is_empty());
}

/// The cluster state's `metadata` metric as Elasticsearch 8.x renders it, cut down by
/// `filter_path` (which applies to every answer).
#[tokio::test]
async fn cluster_state_metadata_and_filter_path() {
    let t = T::new().await;
    let script = json!({"script": {"lang": "painless", "source": "ctx.x = 1"}});
    assert_eq!(t.es(Method::PUT, "/_scripts/s1", Some(script)).await.0, 200);
    t.s.put_index_settings("packetbeat-1", json!({"index.final_pipeline": "p"}));
    t.s.put_index_settings("packetbeat-2", json!({}));
    t.s.put_index_settings("other", json!({}));
    t.s.put_index_settings("logs-dns-1", json!({}));
    let job = json!({"analysis_config": {"bucket_span": "15m", "detectors": [{"function": "count"}]}, "data_description": {"time_field": "@timestamp"}});
    assert_eq!(
        t.es(Method::PUT, "/_ml/anomaly_detectors/j", Some(job))
            .await
            .0,
        200
    );
    let feed = json!({"job_id": "j", "indices": ["logs-*"]});
    assert_eq!(
        t.es(Method::PUT, "/_ml/datafeeds/datafeed-j", Some(feed))
            .await
            .0,
        200
    );
    assert_eq!(
        t.es(Method::POST, "/_ml/anomaly_detectors/j/_open", None)
            .await
            .0,
        200
    );
    assert_eq!(
        t.es(Method::POST, "/_ml/datafeeds/datafeed-j/_start", None)
            .await
            .0,
        200
    );

    // Customs (scripts, tasks) come only when no index is named: the indices are picked by
    // filter_path instead (see cluster_state_has_no_customs_when_indices_are_named).
    let filter = "metadata.stored_scripts.s1,metadata.stored_scripts.absent,metadata.indices.packetbeat-*.state,metadata.indices.packetbeat-*.settings.index.final_pipeline,metadata.persistent_tasks.tasks.id,metadata.persistent_tasks.tasks.task.*.state";
    let (s, v) = t
        .es(
            Method::GET,
            &format!("/_cluster/state/metadata?local=true&filter_path={filter}"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v,
        json!({"metadata": {
            "stored_scripts": {"s1": {"lang": "painless", "source": "ctx.x = 1"}},
            "indices": {
                "packetbeat-1": {"state": "open", "settings": {"index": {"final_pipeline": "p"}}},
                "packetbeat-2": {"state": "open"}
            },
            "persistent_tasks": {"tasks": [
                {"id": "job-j", "task": {"xpack/ml/job": {"state": {"state": "opened", "allocation_id": 1}}}},
                {"id": "datafeed-datafeed-j", "task": {"xpack/ml/datafeed": {"state": "started"}}}
            ]}
        }})
    );
    // Nothing matched: an empty object, as Elasticsearch answers.
    let (_, v) = t
        .es(
            Method::GET,
            "/_cluster/state/metadata?filter_path=metadata.stored_scripts.none",
            None,
        )
        .await;
    assert_eq!(v, json!({}));
    // A metric the stand-in does not model is said so, not faked.
    let (s, _) = t
        .es(Method::GET, "/_cluster/state/routing_table", None)
        .await;
    assert_eq!(s, 501);
    // filter_path applies to other answers too.
    let (_, v) = t
        .es(Method::GET, "/?filter_path=version.number", None)
        .await;
    assert_eq!(v, json!({"version": {"number": "8.17.0"}}));
}

/// File-based settings (ECK's StackConfigPolicy) own a pipeline and a composable template: the
/// REST API refuses to change or delete them with Elasticsearch's reserved-state error
/// (ActionWithReservedState.validateForReservedState), and leaves them as they were.
#[tokio::test]
async fn reserved_state_is_read_only() {
    let t = T::new().await;
    let body = json!({"processors": [{"set": {"field": "a", "value": "b"}}]});
    t.s.reserve_pipeline("logs-x@custom", body.clone());
    let (st, v) = t
        .es(
            Method::PUT,
            "/_ingest/pipeline/logs-x@custom",
            Some(json!({"processors": []})),
        )
        .await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["type"], "illegal_argument_exception");
    assert_eq!(
        v["error"]["reason"],
        "Failed to process request [org.elasticsearch.action.ingest.PutPipelineRequest/unset] \
         with errors: [[logs-x@custom] set as read-only by [file_settings]]"
    );
    let (st, _) = t
        .es(Method::DELETE, "/_ingest/pipeline/logs-x@custom", None)
        .await;
    assert_eq!(st, 400);
    assert_eq!(t.s.pipelines()["logs-x@custom"], body);
    // Other pipelines stay writable.
    let (st, _) = t
        .es(Method::PUT, "/_ingest/pipeline/other", Some(body.clone()))
        .await;
    assert_eq!(st, 200);

    t.s.reserve_index_template("tmpl", json!({"index_patterns": ["x-*"]}));
    let (st, v) = t
        .es(
            Method::PUT,
            "/_index_template/tmpl",
            Some(json!({"index_patterns": ["y-*"]})),
        )
        .await;
    assert_eq!(st, 400);
    let reason = v["error"]["reason"].as_str().unwrap();
    assert!(
        reason.ends_with("[[composable_index_template:tmpl] set as read-only by [file_settings]]"),
        "{reason}"
    );
}

/// Kibana with `server.basePath` + `server.rewriteBasePath`: served under the base path only.
#[tokio::test]
async fn kibana_base_path_rewrite() {
    let t = T::new().await;
    t.s.set_kibana_base_path("/kb");
    let (st, _) = t.kb(Method::GET, "/api/status", None).await;
    assert_eq!(st, 404);
    let (st, _) = t.kb(Method::GET, "/kbx/api/status", None).await;
    assert_eq!(st, 404);
    let (st, v) = t.kb(Method::GET, "/kb/api/status", None).await;
    assert_eq!(st, 200, "{v}");
}

// ---------------------------------------------------------------- version profiles & indices
// Each test below is a row of tests/standin/CONFORMANCE.md ("Version profiles and index
// wiring").

fn profile(v: &str) -> StandinConfig {
    StandinConfig {
        es_version: v.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn settings_read_omits_indices_without_the_named_settings() {
    let t = T::new().await;
    t.s.put_index_settings(
        "packetbeat-7.17.0-a",
        json!({"index.number_of_shards": "1"}),
    );
    t.s.put_index_settings("packetbeat-7.17.0-b", json!({"index.final_pipeline": "p"}));
    let path = "/packetbeat-*/_settings/index.default_pipeline,index.final_pipeline?allow_no_indices=true&ignore_unavailable=true&expand_wildcards=open";
    let (s, v) = t.es(Method::GET, path, None).await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"packetbeat-7.17.0-b": {"settings": {"index": {"final_pipeline": "p"}}}})
    );
    // Every index has an `index.uuid`, so a read that names it lists every index.
    let (_, v) = t
        .es(
            Method::GET,
            "/packetbeat-*/_settings/index.uuid,index.final_pipeline",
            None,
        )
        .await;
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    assert!(
        v.pointer("/packetbeat-7.17.0-a/settings/index/uuid")
            .is_some()
    );
}

#[tokio::test]
async fn data_streams_answer_with_backing_indices_and_rollover_takes_the_template() {
    let t = T::new().await;
    t.s.put_index_template(
        "packetbeat-8.17.0",
        json!({"index_patterns": ["packetbeat-8.17.0"], "data_stream": {}, "priority": 150,
               "template": {"settings": {"index": {"number_of_shards": "1"}}}}),
    );
    t.s.create_data_stream("packetbeat-8.17.0").unwrap();
    let first = ".ds-packetbeat-8.17.0-2026.12.05-000001";
    let (_, v) = t
        .es(Method::GET, "/packetbeat-*/_settings/index.uuid", None)
        .await;
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec![first]
    );
    // Settings put through the stream land on its backing index.
    let (s, _) = t
        .es(
            Method::PUT,
            "/packetbeat-8.17.0/_settings",
            Some(json!({"index": {"final_pipeline": "router"}})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        t.s.index_settings()[first]["index.final_pipeline"],
        "router"
    );
    assert!(!t.s.index_settings().contains_key("packetbeat-8.17.0"));
    // Rollover: the new write index has the template's settings, not the old index's.
    let second = t.s.rollover("packetbeat-8.17.0").unwrap();
    assert_eq!(second, ".ds-packetbeat-8.17.0-2026.12.05-000002");
    let (_, v) = t
        .es(
            Method::GET,
            "/packetbeat-*/_settings/index.final_pipeline",
            None,
        )
        .await;
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec![first]
    );
    // A template that carries the setting wires the next generation.
    t.s.put_index_template(
        "packetbeat-8.17.0",
        json!({"index_patterns": ["packetbeat-8.17.0"], "data_stream": {}, "priority": 150,
               "template": {"settings": {"index": {"final_pipeline": "router"}}}}),
    );
    let third = t.s.rollover("packetbeat-8.17.0").unwrap();
    assert_eq!(
        t.s.index_settings()[&third]["index.final_pipeline"],
        "router"
    );
    // Wildcards do not match the hidden backing indices themselves.
    let (_, v) = t
        .es(
            Method::GET,
            "/*-000001/_settings/index.uuid?allow_no_indices=true",
            None,
        )
        .await;
    assert_eq!(v.as_object().unwrap().len(), 0, "{v}");
    let (_, v) = t.es(Method::GET, "/_data_stream/packetbeat-*", None).await;
    assert_eq!(v["data_streams"][0]["indices"].as_array().unwrap().len(), 3);
    assert_eq!(v["data_streams"][0]["template"], "packetbeat-8.17.0");
}

#[tokio::test]
async fn cluster_state_has_no_customs_when_indices_are_named() {
    let t = T::new().await;
    t.s.put_index_settings("packetbeat-a", json!({"index.final_pipeline": "p"}));
    t.s.put_script("s1", json!({"lang": "painless", "source": "1"}));
    let (_, named) = t
        .es(Method::GET, "/_cluster/state/metadata/packetbeat-*", None)
        .await;
    assert!(named["metadata"]["indices"]["packetbeat-a"].is_object());
    for custom in ["stored_scripts", "persistent_tasks", "ingest"] {
        assert!(named["metadata"].get(custom).is_none(), "{custom}: {named}");
    }
    let (_, all) = t.es(Method::GET, "/_cluster/state/metadata", None).await;
    assert!(all["metadata"]["stored_scripts"]["s1"].is_object());
    assert!(all["metadata"]["indices"]["packetbeat-a"].is_object());
}

/// `filter_path` splits on unescaped dots only (`FilterPath`), so names with dots (data stream
/// backing indices, versioned templates) are reached with `\\.`; the cluster state carries the
/// composable index templates (`index_template.index_template`) and data streams when no index
/// is named; a template's settings come back nested with string values (`Settings`).
#[tokio::test]
async fn cluster_state_filter_path_escapes_dots_and_carries_templates() {
    let t = T::new().await;
    t.s.put_index_template(
        "packetbeat-8.17.0",
        json!({"index_patterns": ["packetbeat-8.17.0"], "data_stream": {}, "priority": 150}),
    );
    let (s, _) = t
        .es(
            Method::PUT,
            "/_index_template/packetbeat-8.17.0",
            Some(json!({"index_patterns": ["packetbeat-8.17.0"], "data_stream": {}, "priority": 150,
                "template": {"settings": {"index.final_pipeline": "router", "number_of_shards": 1}}})),
        )
        .await;
    assert_eq!(s, 200);
    let (_, got) = t
        .es(Method::GET, "/_index_template/packetbeat-8.17.0", None)
        .await;
    assert_eq!(
        got["index_templates"][0]["index_template"]["template"]["settings"],
        json!({"index": {"final_pipeline": "router", "number_of_shards": "1"}})
    );
    t.s.create_data_stream("packetbeat-8.17.0").unwrap();
    t.s.put_index_settings("packetbeat-7.17.0-1", json!({"index.uuid": "u"}));
    let filter = [
        "metadata.indices.packetbeat-*.state",
        "metadata.indices.%5C.ds-packetbeat-*.settings.index.*_pipeline",
        "metadata.index_template.index_template.packetbeat-8%5C.17%5C.0.template.settings.index.*_pipeline",
        "metadata.data_stream.data_stream.packetbeat-8%5C.17%5C.0.generation",
    ]
    .join(",");
    let (s, v) = t
        .es(
            Method::GET,
            &format!("/_cluster/state/metadata?filter_path={filter}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"metadata": {
            "indices": {
                "packetbeat-7.17.0-1": {"state": "open"},
                ".ds-packetbeat-8.17.0-2026.12.05-000001": {"settings": {"index": {"final_pipeline": "router"}}}
            },
            "index_template": {"index_template": {"packetbeat-8.17.0": {"template": {"settings": {"index": {"final_pipeline": "router"}}}}}},
            "data_stream": {"data_stream": {"packetbeat-8.17.0": {"generation": 1}}}
        }})
    );
    // Unescaped, the dots split the name: nothing matches.
    let (_, v) = t
        .es(
            Method::GET,
            "/_cluster/state/metadata?filter_path=metadata.index_template.index_template.packetbeat-8.17.0",
            None,
        )
        .await;
    assert_eq!(v, json!({}));
}

#[tokio::test]
async fn pipeline_fields_follow_the_version_profile() {
    let with_meta = json!({"processors": [], "_meta": {"k": "v"}});
    let hook =
        json!({"processors": [{"pipeline": {"name": "r", "ignore_missing_pipeline": true}}]});
    for (v, meta_ok, imp_ok, dates) in [
        ("7.10", false, false, false),
        ("7.17", true, false, false),
        ("8.17", true, true, false),
        ("9.2", true, true, true),
    ] {
        let t = T::with(profile(v)).await;
        let (s, b) = t
            .es(Method::PUT, "/_ingest/pipeline/m", Some(with_meta.clone()))
            .await;
        assert_eq!(s == 200, meta_ok, "{v} _meta: {b}");
        if !meta_ok {
            assert_eq!(b["error"]["type"], "parse_exception");
            assert!(
                b["error"]["reason"].as_str().unwrap().contains("[_meta]"),
                "{b}"
            );
        }
        let (s, b) = t
            .es(Method::PUT, "/_ingest/pipeline/h", Some(hook.clone()))
            .await;
        assert_eq!(s == 200, imp_ok, "{v} ignore_missing_pipeline: {b}");
        let (s, _) = t
            .es(
                Method::PUT,
                "/_ingest/pipeline/plain",
                Some(json!({"processors": []})),
            )
            .await;
        assert_eq!(s, 200);
        let (_, got) = t.es(Method::GET, "/_ingest/pipeline/plain", None).await;
        assert_eq!(
            got["plain"].get("created_date_millis").is_some(),
            dates,
            "{v}: {got}"
        );
        assert_eq!(
            got["plain"].get("modified_date_millis").is_some(),
            dates,
            "{v}: {got}"
        );
        let (_, info) = t.es(Method::GET, "/", None).await;
        assert!(
            info["version"]["number"].as_str().unwrap().starts_with(v),
            "{info}"
        );
    }
}

/// PUTs a generated model under `id` with `inference_config`; a document holding one of its
/// inputs.
async fn put_generated_model(t: &T, id: &str, inference_config: Value) -> Value {
    let mut model: Value =
        serde_json::from_slice(&model_body(id, 50_000, ModelEncoding::Plain)).unwrap();
    model["inference_config"] = inference_config;
    let first_input = model["input"]["field_names"][0]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _, _) = t
        .raw(
            &t.s.es_url(),
            Method::PUT,
            &format!("/_ml/trained_models/{id}"),
            Some(serde_json::to_vec(&model).unwrap()),
        )
        .await;
    assert_eq!(s, 200);
    let mut with_input = json!({});
    with_input[&first_input] = json!(0.5);
    with_input
}

/// ClassificationConfig's field names come from the model's stored `inference_config` merged
/// with the processor's (InferenceProcessor / ClassificationConfigUpdate.apply), and a document
/// with none of the model's input fields gets a `warning` instead of a prediction
/// (LocalModel.infer).
#[tokio::test]
async fn inference_merges_the_models_config_and_warns_when_all_fields_are_missing() {
    let t = T::new().await;
    let with_input = put_generated_model(
        &t,
        "dga_cfg",
        json!({"classification": {"results_field": "malicious_prediction", "num_top_classes": 0}}),
    )
    .await;
    let body = json!({
        "pipeline": {"processors": [{"inference": {"model_id": "dga_cfg", "target_field": "ml",
            "inference_config": {"classification": {"num_top_classes": 1}}}}]},
        "docs": [{"_source": with_input}, {"_source": {"unrelated": 1}}]
    });
    let (s, v) = t
        .es(Method::POST, "/_ingest/pipeline/_simulate", Some(body))
        .await;
    assert_eq!(s, 200, "{v}");
    let ml = &v["docs"][0]["doc"]["_source"]["ml"];
    assert!(ml.get("malicious_prediction").is_some(), "{ml}");
    assert!(ml.get("predicted_value").is_none(), "{ml}");
    assert_eq!(ml["top_classes"].as_array().map(Vec::len), Some(1), "{ml}");
    let warned = &v["docs"][1]["doc"]["_source"]["ml"];
    assert_eq!(
        warned["warning"], "Model [dga_cfg] could not be inferred as all fields were missing",
        "{warned}"
    );
}

/// The stored config's other keys survive a processor config that names none of them (the
/// processor's `classification` is merged over the model's, `InferenceProcessor.Factory` /
/// `ClassificationConfigUpdate.apply`): `top_classes_results_field`, `prediction_field_type`
/// (number: the DGA model's), and the class entries' keys.
#[tokio::test]
async fn inference_keeps_the_models_top_classes_field_and_prediction_type() {
    let t = T::new().await;
    let with_input = put_generated_model(
        &t,
        "dga_typed",
        json!({"classification": {"results_field": "malicious_prediction", "num_top_classes": 0,
            "top_classes_results_field": "classes", "prediction_field_type": "number"}}),
    )
    .await;
    let body = json!({
        "pipeline": {"processors": [{"inference": {"model_id": "dga_typed", "target_field": "ml",
            "inference_config": {"classification": {"num_top_classes": 2}}}}]},
        "docs": [{"_source": with_input}]
    });
    let (s, v) = t
        .es(Method::POST, "/_ingest/pipeline/_simulate", Some(body))
        .await;
    assert_eq!(s, 200, "{v}");
    let ml = &v["docs"][0]["doc"]["_source"]["ml"];
    assert!(ml["malicious_prediction"].is_number(), "number-typed: {ml}");
    assert!(
        ml.get("top_classes").is_none(),
        "the model's field name kept: {ml}"
    );
    let classes = ml["classes"]
        .as_array()
        .expect("top classes under `classes`");
    assert_eq!(classes.len(), 2, "{ml}");
    for c in classes {
        assert!(c["class_name"].is_number(), "{c}");
        assert!(
            c["class_probability"].is_number() && c["class_score"].is_number(),
            "{c}"
        );
    }
}

/// Model ids (`MlStrings.isValidId`, `TrainedModelConfig` id check: lowercase alphanumerics,
/// `-`, `_`, `.`, alphanumeric at both ends, at most 64 characters) and the head fields each
/// version's strict parser knows (`TrainedModelConfig.STRICT_PARSER`; see `profile.rs` SINCE):
/// unknown before their version, accepted or refused at creation after.
#[tokio::test]
async fn model_ids_and_head_field_gates_per_version() {
    let base = json!({"input": {"field_names": ["a"]},
        "inference_config": {"classification": {}},
        "definition": {"trained_model": {"tree": {}}}});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let t = T::with(StandinConfig {
        es_version: "8.17".into(),
        ..Default::default()
    })
    .await;
    let long = "a".repeat(65);
    for bad in ["Upper_case", "-leading", "trailing_", long.as_str()] {
        let (s, v) = t
            .es(
                Method::PUT,
                &format!("/_ml/trained_models/{bad}"),
                Some(base.clone()),
            )
            .await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(
            v["error"]["type"], "action_request_validation_exception",
            "{bad}"
        );
        let why = if bad.len() > 64 {
            format!("Invalid model_id; '{bad}' cannot contain more than 64 characters.")
        } else {
            format!(
                "Invalid model_id; '{bad}' can contain lowercase alphanumeric (a-z and 0-9), hyphens or underscores; must start and end with alphanumeric"
            )
        };
        assert_eq!(
            v["error"]["reason"],
            format!("Validation Failed: 1: {why};"),
            "{bad}"
        );
    }
    let (s, v) = t
        .es(
            Method::PUT,
            &format!("/_ml/trained_models/{}", "a".repeat(64)),
            Some(base.clone()),
        )
        .await;
    assert_eq!(s, 200, "64 characters: {v}");
    // 8.x: the deprecated size alias is accepted at creation and kept as model_size_bytes.
    let (s, v) = t
        .es(
            Method::PUT,
            "/_ml/trained_models/alias",
            Some(with("estimated_heap_memory_usage_bytes", json!(1234))),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model_size_bytes"], 1234, "{v}");
    // 8.x/9.x refuse the two read-only metadata keys, as 7.x does.
    let mut meta = base.clone();
    meta["metadata"] = json!({"model_aliases": ["x"], "total_feature_importance": []});
    let (s, v) = t
        .es(Method::PUT, "/_ml/trained_models/meta", Some(meta))
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["error"]["reason"],
        "Validation Failed: 1: illegal to set [metadata.total_feature_importance] at inference model creation;2: illegal to set [metadata.model_aliases] at inference model creation;"
    );
    // Fields by version: unknown to the parser before, refused or accepted from their version.
    let unknown = |k: &str| format!("[1:2] [trained_model_config] unknown field [{k}]");
    for (version, field, value, answer) in [
        (
            "8.7",
            "model_package",
            json!({"packaged_model_id": "p"}),
            Err(unknown("model_package")),
        ),
        (
            "8.8",
            "model_package",
            json!({"packaged_model_id": "p"}),
            Err(
                "Validation Failed: 1: illegal to set [model_package] at inference model creation;"
                    .to_string(),
            ),
        ),
        (
            "8.10",
            "platform_architecture",
            json!("linux-x86_64"),
            Err(unknown("platform_architecture")),
        ),
        (
            "8.11",
            "platform_architecture",
            json!("linux-x86_64"),
            Ok(()),
        ),
        (
            "8.11",
            "prefix_strings",
            json!({"ingest": "a: "}),
            Err(unknown("prefix_strings")),
        ),
        ("8.12", "prefix_strings", json!({"ingest": "a: "}), Ok(())),
    ] {
        let t = T::with(StandinConfig {
            es_version: version.into(),
            ..Default::default()
        })
        .await;
        let (s, v) = t
            .es(
                Method::PUT,
                "/_ml/trained_models/gated",
                Some(with(field, value)),
            )
            .await;
        match answer {
            Ok(()) => assert_eq!(s, 200, "{version} {field}: {v}"),
            Err(reason) => {
                assert_eq!(s, 400, "{version} {field}: {v}");
                assert_eq!(v["error"]["reason"], reason, "{version} {field}");
            }
        }
    }
}

/// `_update` of an anomaly job (JobUpdate.java): `custom_settings` replaced whole, also on an
/// opened job; an unknown field refused; an unknown job 404.
#[tokio::test]
async fn ml_job_update_replaces_custom_settings() {
    let t = T::new().await;
    let job = json!({"analysis_config": {"bucket_span": "15m", "detectors": [{"function": "count"}]},
        "data_description": {"time_field": "@timestamp"}, "custom_settings": {"a": 1, "b": 2}});
    let (s, v) = t
        .es(Method::PUT, "/_ml/anomaly_detectors/j", Some(job))
        .await;
    assert_eq!(s, 200, "{v}");
    t.es(Method::POST, "/_ml/anomaly_detectors/j/_open", None)
        .await;
    let (s, v) = t
        .es(
            Method::POST,
            "/_ml/anomaly_detectors/j/_update",
            Some(json!({"custom_settings": {"c": 3}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["custom_settings"], json!({"c": 3}));
    let (_, v) = t.es(Method::GET, "/_ml/anomaly_detectors/j", None).await;
    assert_eq!(v["jobs"][0]["custom_settings"], json!({"c": 3}));
    let (s, v) = t
        .es(
            Method::POST,
            "/_ml/anomaly_detectors/j/_update",
            Some(json!({"bucket_span": "1h"})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["type"], "x_content_parse_exception");
    let (s, v) = t
        .es(
            Method::POST,
            "/_ml/anomaly_detectors/nope/_update",
            Some(json!({"custom_settings": {}})),
        )
        .await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["type"], "resource_not_found_exception");
    assert!(t.s.off_spec_requests().is_empty());
}

/// Rows of CONFORMANCE.md "REST behaviours (helper conformance)" that no other test showed:
/// `include=definition`, the ML state conflicts (all 409 `status_exception`, messages as
/// Elasticsearch words them), a match-all pipeline delete with nothing to delete, the
/// `WWW-Authenticate` challenges and Kibana's `kbn-xsrf` pre-handler.
#[tokio::test]
async fn conformance_rest_shapes() {
    let t = T::new().await;
    let (s, _, v) = t
        .raw(
            &t.s.es_url(),
            Method::PUT,
            "/_ml/trained_models/dga_def",
            Some(model_body("dga_def", 2_000, ModelEncoding::Compressed)),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = t.es(Method::GET, "/_ml/trained_models/dga_def", None).await;
    assert!(v["trained_model_configs"][0].get("definition").is_none());
    let (_, v) = t
        .es(
            Method::GET,
            "/_ml/trained_models/dga_def?include=definition",
            None,
        )
        .await;
    assert!(
        v["trained_model_configs"][0]["definition"]["trained_model"].is_object(),
        "{v}"
    );

    // No pipeline at all: GET lists nothing, 404 `{}` (GetPipelineResponse.status).
    let (s, v) = t.es(Method::GET, "/_ingest/pipeline", None).await;
    assert_eq!((s, v), (404, json!({})));
    // Nothing to delete under a match-all pattern: acknowledged (IngestService.innerDelete).
    let (s, v) = t.es(Method::DELETE, "/_ingest/pipeline/*", None).await;
    assert_eq!((s, v), (200, json!({"acknowledged": true})));
    let (s, v) = t.es(Method::DELETE, "/_ingest/pipeline/dga*", None).await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["reason"], "pipeline [dga*] is missing");

    // pipeline_count (TransportGetTrainedModelsStatsAction) and the per-document licence check
    // of the inference processor (LicenseUtils.newComplianceException).
    let pipe = json!({"processors": [{"inference": {"model_id": "dga_def"}}]});
    let (s, _) = t
        .es(Method::PUT, "/_ingest/pipeline/uses_def", Some(pipe))
        .await;
    assert_eq!(s, 200);
    let (_, v) = t
        .es(Method::GET, "/_ml/trained_models/dga_def/_stats", None)
        .await;
    assert_eq!(v["trained_model_stats"][0]["pipeline_count"], 1, "{v}");
    t.s.set_license("basic");
    let (s, v) = t
        .es(
            Method::POST,
            "/_ingest/pipeline/uses_def/_simulate",
            Some(json!({"docs": [{"_source": {"a": 1}}]})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["docs"][0]["error"]["reason"], "current license is non-compliant for [inference]",
        "{v}"
    );
    t.s.set_license("platinum");
    t.es(Method::DELETE, "/_ingest/pipeline/uses_def", None)
        .await;

    let job = json!({"analysis_config": {"bucket_span": "15m", "detectors": [{"function": "high_sum", "field_name": "x"}]}, "data_description": {"time_field": "@timestamp"}});
    t.es(Method::PUT, "/_ml/anomaly_detectors/j", Some(job))
        .await;
    let feed = json!({"job_id": "j", "indices": ["logs-*"]});
    t.es(Method::PUT, "/_ml/datafeeds/datafeed-j", Some(feed.clone()))
        .await;
    let (s, v) = t
        .es(Method::PUT, "/_ml/datafeeds/datafeed-j", Some(feed.clone()))
        .await;
    assert_eq!(
        (s, &v["error"]["type"]),
        (400, &json!("resource_already_exists_exception"))
    );
    let (s, v) = t
        .es(Method::PUT, "/_ml/datafeeds/datafeed-other", Some(feed))
        .await;
    assert_eq!(s, 409);
    assert_eq!(v["error"]["type"], "status_exception");
    assert_eq!(
        v["error"]["reason"],
        "A datafeed [datafeed-j] already exists for job [j]"
    );
    let (s, v) = t
        .es(Method::POST, "/_ml/datafeeds/datafeed-j/_start", None)
        .await;
    assert_eq!(s, 409);
    assert_eq!(
        v["error"]["reason"],
        "cannot start datafeed [datafeed-j] because job [j] is closed"
    );
    t.es(Method::POST, "/_ml/anomaly_detectors/j/_open", None)
        .await;
    t.s.put_index_settings("logs-dns-1", json!({}));
    t.es(Method::POST, "/_ml/datafeeds/datafeed-j/_start", None)
        .await;
    let (s, v) = t
        .es(Method::POST, "/_ml/anomaly_detectors/j/_close", None)
        .await;
    assert_eq!(s, 409);
    assert_eq!(
        v["error"]["reason"],
        "cannot close job [j], datafeed hasn't been stopped"
    );
    let (s, v) = t.es(Method::DELETE, "/_ml/anomaly_detectors/j", None).await;
    assert_eq!(s, 409);
    assert_eq!(
        v["error"]["reason"],
        "Cannot delete job [j] because the job is opened"
    );

    let cfg = StandinConfig {
        auth: Auth {
            basic: vec![("elastic".into(), "changeme".into())],
            api_keys: vec![],
            bearer: vec![],
        },
        ..Default::default()
    };
    let a = T::with(cfg).await;
    let r = a.c.get(a.s.es_url()).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenges: Vec<_> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|h| h.to_str().unwrap().to_string())
        .collect();
    assert!(
        challenges
            .iter()
            .any(|c| c.starts_with("Basic realm=\"security\""))
            && challenges.iter().any(|c| c == "ApiKey"),
        "{challenges:?}"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["error"]["reason"],
        "missing authentication credentials for REST request [/]"
    );
    assert_eq!(v["status"], 401);

    let r =
        t.c.post(format!("{}/api/detection_engine/rules", t.s.kibana_url()))
            .basic_auth("elastic", Some("changeme"))
            .json(&json!({"rule_id": "x", "type": "query"}))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"statusCode": 400, "error": "Bad Request", "message": "Request must contain a kbn-xsrf header."})
    );
    assert!(t.s.rules("default").is_empty());
    // `kbn-version` passes the same check (lifecycle_handlers.ts).
    let r =
        t.c.post(format!("{}/api/detection_engine/rules", t.s.kibana_url()))
            .basic_auth("elastic", Some("changeme"))
            .header("kbn-version", "8.17.0")
            .json(&rule("r-kv", "t"))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(t.s.rules("default").len(), 1);
}

/// A `GET _ml/trained_models/<id>?include=definition` export of the generated model.
fn exported_model(id: &str) -> Value {
    let mut spec = ModelSpec::new(id, 20_000, 7);
    spec.get_export_of = Some("8.17.0".into());
    let mut out = Vec::new();
    write_model_json(&spec, ModelEncoding::Plain, &mut out).unwrap();
    serde_json::from_slice(&out).unwrap()
}

#[tokio::test]
async fn model_put_refuses_what_each_version_refuses() {
    let export = exported_model("dga_x");
    for (version, refused, strip) in [
        // 8.x/9.x: the parser knows every field of an 8.x export; validate(true) lists the
        // generated ones, in its order.
        (
            "8.17",
            "action_request_validation_exception: Validation Failed: 1: illegal to set [version] at inference model creation;2: illegal to set [created_by] at inference model creation;3: illegal to set [create_time] at inference model creation;4: illegal to set [license_level] at inference model creation;5: illegal to set [location] at inference model creation;",
            &[
                "version",
                "created_by",
                "create_time",
                "license_level",
                "location",
            ][..],
        ),
        (
            "9.2",
            "action_request_validation_exception: Validation Failed: 1: illegal to set [version] at inference model creation;2: illegal to set [created_by] at inference model creation;3: illegal to set [create_time] at inference model creation;4: illegal to set [license_level] at inference model creation;5: illegal to set [location] at inference model creation;",
            &[
                "version",
                "created_by",
                "create_time",
                "license_level",
                "location",
            ][..],
        ),
        // 7.x: the strict parser stops at a field it does not declare.
        (
            "7.17",
            "x_content_parse_exception: [1:2] [trained_model_config] unknown field [location]",
            &[
                "version",
                "created_by",
                "create_time",
                "license_level",
                "location",
                "model_type",
                "model_size_bytes",
                "estimated_operations",
            ][..],
        ),
    ] {
        let t = T::with(StandinConfig {
            es_version: version.into(),
            ..Default::default()
        })
        .await;
        let (s, v) = t
            .es(
                Method::PUT,
                "/_ml/trained_models/dga_x",
                Some(export.clone()),
            )
            .await;
        assert_eq!(s, 400, "{version}: {v}");
        let got = format!(
            "{}: {}",
            v["error"]["type"].as_str().unwrap(),
            v["error"]["reason"].as_str().unwrap()
        );
        assert_eq!(got, refused, "{version}");
        let mut fitted = export.clone();
        for k in strip {
            fitted.as_object_mut().unwrap().remove(*k);
        }
        let (s, v) = t
            .es(Method::PUT, "/_ml/trained_models/dga_x", Some(fitted))
            .await;
        assert_eq!(s, 200, "{version}: {v}");
        if version != "7.17" {
            // 8.x keeps the sizes given at creation.
            assert_eq!(v["model_size_bytes"], 246_784_104u64, "{version}");
        }
    }
    // 7.x refuses the sizes as generated fields; metadata holds two read-only keys.
    let t = T::with(StandinConfig {
        es_version: "7.17".into(),
        ..Default::default()
    })
    .await;
    let body = json!({"input": {"field_names": ["a"]}, "inference_config": {"classification": {}},
        "estimated_operations": 3, "metadata": {"model_aliases": ["x"], "total_feature_importance": []},
        "definition": {"trained_model": {"tree": {}}}});
    let (s, v) = t.es(Method::PUT, "/_ml/trained_models/m", Some(body)).await;
    assert_eq!(s, 400);
    assert_eq!(
        v["error"]["reason"],
        "Validation Failed: 1: illegal to set [estimated_operations] at inference model creation;2: illegal to set [metadata.total_feature_importance] at inference model creation;3: illegal to set [metadata.model_aliases] at inference model creation;"
    );
}

#[tokio::test]
async fn bodies_over_http_max_content_length_are_answered_413_unread() {
    let t = T::new().await;
    t.s.set_http_max_content_length(1000);
    let big = vec![b' '; 1001];
    // Declared length over the limit: 413 with no body and the connection closed.
    let r =
        t.c.put(format!("{}/_ingest/pipeline/p", t.s.es_url()))
            .basic_auth("elastic", Some("changeme"))
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-length"], "0");
    assert_eq!(r.headers()["connection"], "close");
    assert!(r.headers().get("x-elastic-product").is_none());
    assert!(r.bytes().await.unwrap().is_empty());
    // Streamed without a length: counted as it arrives, the same answer once over.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b' '; 600]), Ok(vec![b' '; 600])];
    let r =
        t.c.put(format!("{}/_ingest/pipeline/p", t.s.es_url()))
            .basic_auth("elastic", Some("changeme"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 413);
    assert!(t.s.requests().iter().filter(|q| q.status == 413).count() == 2);
    // At the limit: handled as usual.
    let mut ok = json!({"processors": []}).to_string().into_bytes();
    ok.resize(1000, b' ');
    let (s, _, v) = t
        .raw(&t.s.es_url(), Method::PUT, "/_ingest/pipeline/p", Some(ok))
        .await;
    assert_eq!(s, 200, "{v}");
}

/// `_start` of a datafeed whose indices match no index (a fresh stack without DNS data) is
/// refused before any task exists with 409 (real-stack.md); once an index (or a data stream)
/// matches, the same request starts it.
#[tokio::test]
async fn datafeed_start_without_matching_index_is_refused() {
    let reason = "No node found to start datafeed [datafeed-j], allocation explanation [cannot start datafeed [datafeed-j] because index [logs-network_traffic.*] does not exist, is closed, or is still initializing.]";
    for v in ["7.10", "7.17", "8.17", "9.2"] {
        let t = T::with(profile(v)).await;
        let job = json!({"analysis_config": {"bucket_span": "15m", "detectors": [{"function": "count"}]}, "data_description": {"time_field": "@timestamp"}});
        t.es(Method::PUT, "/_ml/anomaly_detectors/j", Some(job))
            .await;
        let feed = json!({"job_id": "j", "indices": ["logs-network_traffic.*", "packetbeat-*"]});
        t.es(Method::PUT, "/_ml/datafeeds/datafeed-j", Some(feed))
            .await;
        t.es(Method::POST, "/_ml/anomaly_detectors/j/_open", None)
            .await;
        // A hidden index does not match a wildcard.
        t.s.put_index_settings(".packetbeat-hidden", json!({}));
        let (s, b) = t
            .es(Method::POST, "/_ml/datafeeds/datafeed-j/_start", None)
            .await;
        assert_eq!(s, 409, "{v}: {b}");
        assert_eq!(b["error"]["type"], "status_exception", "{v}");
        assert_eq!(b["error"]["reason"], reason, "{v}");
        let (_, st) = t
            .es(Method::GET, "/_ml/datafeeds/datafeed-j/_stats", None)
            .await;
        assert_eq!(st["datafeeds"][0]["state"], "stopped", "{v}");
        // One of the patterns matching is enough (ES PR #62827, 7.10 on).
        t.s.put_index_settings("packetbeat-8.17.0-2026.12.05", json!({}));
        let (s, b) = t
            .es(Method::POST, "/_ml/datafeeds/datafeed-j/_start", None)
            .await;
        assert_eq!(s, 200, "{v}: {b}");
    }
}

/// Elastic's DGA rules as the fixture records them (rule_id → (version, version before 9.4)).
fn elastic_dga() -> Vec<(String, u64, u64)> {
    let f: Value =
        serde_json::from_str(include_str!("../fixtures/elastic-dga-content.json")).unwrap();
    f["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let v = r["version"].as_u64().unwrap();
            let before = r["version_before_9_4"].as_u64().unwrap_or(v);
            (r["rule_id"].as_str().unwrap().to_string(), v, before)
        })
        .collect()
}

async fn kb_internal(
    t: &T,
    m: Method,
    path: &str,
    version: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut rb =
        t.c.request(m, format!("{}{path}", t.s.kibana_url()))
            .basic_auth("elastic", Some("changeme"))
            .header("kbn-xsrf", "true");
    if let Some(v) = version {
        rb = rb.header("elastic-api-version", v);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn kibana_profile(v: &str, dga: bool) -> StandinConfig {
    StandinConfig {
        kibana_version: v.into(),
        kibana_prebuilt_dga: dga,
        ..Default::default()
    }
}

const STATUS: &str = "/internal/detection_engine/prebuilt_rules/status";
const REVIEW: &str = "/internal/detection_engine/prebuilt_rules/installation/_review";
const PERFORM: &str = "/internal/detection_engine/prebuilt_rules/installation/_perform";

#[tokio::test]
async fn kibana_prebuilt_rules_follow_the_version_profile() {
    let dga = elastic_dga();
    let (ml_id, _, ml_before) = dga.iter().find(|(_, v, b)| v != b).cloned().unwrap();

    // 8.8: no internal prebuilt-rules API; the legacy route installs the package, which does not
    // hold the DGA rules yet.
    let t = T::with(kibana_profile("8.8.2", true)).await;
    let (s, _) = kb_internal(&t, Method::GET, STATUS, Some("1"), None).await;
    assert_eq!(s, 404);
    let (s, v) = t
        .kb(Method::PUT, "/api/detection_engine/rules/prepackaged", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["rules_updated"], 0);
    let installed = t.s.rules("default");
    assert_eq!(
        v["rules_installed"].as_u64().unwrap() as usize,
        installed.len()
    );
    assert!(
        installed
            .iter()
            .all(|r| r["immutable"] == true && r["enabled"] == false)
    );
    assert!(
        installed
            .iter()
            .all(|r| !dga.iter().any(|(id, _, _)| r["rule_id"] == json!(id)))
    );
    assert!(
        installed.iter().all(|r| r.get("rule_source").is_none()),
        "no rule_source before 8.16"
    );
    let (s, v) = t
        .kb(
            Method::GET,
            "/api/detection_engine/rules/prepackaged/_status",
            None,
        )
        .await;
    assert_eq!((s, v["rules_not_installed"].clone()), (200, json!(0)));

    // 8.17 with the package: versioned internal routes, every installable rule listed at once.
    let t = T::with(kibana_profile("8.17.0", true)).await;
    let (s, v) = kb_internal(&t, Method::GET, STATUS, None, None).await;
    assert_eq!(s, 400);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("elastic-api-version"),
        "{v}"
    );
    let (s, v) = kb_internal(&t, Method::GET, STATUS, Some("2"), None).await;
    assert_eq!(s, 400);
    assert!(
        v["message"].as_str().unwrap().contains("No version \"2\""),
        "{v}"
    );
    let (s, v) = kb_internal(&t, Method::GET, STATUS, Some("1"), None).await;
    assert_eq!(s, 200, "{v}");
    let total = v["stats"]["num_prebuilt_rules_total_in_package"]
        .as_u64()
        .unwrap();
    assert_eq!(
        v["stats"]["num_prebuilt_rules_to_install"].as_u64(),
        Some(total)
    );
    let (s, v) = kb_internal(&t, Method::POST, REVIEW, Some("1"), None).await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("total").is_none(), "not paged before 9.4");
    let rules = v["rules"].as_array().unwrap();
    assert_eq!(rules.len() as u64, total);
    for (id, _, before) in &dga {
        let r = rules
            .iter()
            .find(|r| r["rule_id"] == json!(id))
            .expect("DGA rule installable");
        assert_eq!(r["version"].as_u64(), Some(*before), "{id}");
    }
    // A custom rule under an Elastic rule_id does not make it installed: installing the
    // prebuilt rule gives two rules with one rule_id (kibana #180198).
    let (pred_id, pred_v, _) = dga.iter().find(|(id, _, _)| *id != ml_id).cloned().unwrap();
    let mut custom = rule(&pred_id, "ML-DGA");
    custom["name"] = json!("left by the old CLI");
    assert_eq!(
        t.kb(Method::POST, "/api/detection_engine/rules", Some(custom))
            .await
            .0,
        200
    );
    let body = json!({"mode": "SPECIFIC_RULES", "rules": [
        {"rule_id": ml_id, "version": ml_before}, {"rule_id": pred_id, "version": pred_v},
        {"rule_id": "not-in-the-package", "version": 1}]});
    let (s, v) = kb_internal(&t, Method::POST, PERFORM, Some("1"), Some(body.clone())).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["summary"],
        json!({"total": 3, "succeeded": 2, "skipped": 0, "failed": 1})
    );
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not-in-the-package")
    );
    let created = v["results"]["created"].as_array().unwrap();
    let ml = created
        .iter()
        .find(|r| r["rule_id"] == json!(ml_id))
        .unwrap();
    assert_eq!(ml["immutable"], true);
    assert_eq!(ml["enabled"], false);
    assert_eq!(
        ml["rule_source"],
        json!({"type": "external", "is_customized": false})
    );
    assert_eq!(
        ml["machine_learning_job_id"],
        json!(["dga_high_sum_probability"])
    );
    assert_eq!(
        t.s.rules("default")
            .iter()
            .filter(|r| r["rule_id"] == json!(pred_id))
            .count(),
        2
    );
    let (_, v) = kb_internal(&t, Method::POST, PERFORM, Some("1"), Some(body)).await;
    assert_eq!(v["summary"]["skipped"], 2, "{v}");
    assert_eq!(v["results"]["skipped"][0]["reason"], "ALREADY_INSTALLED");
    let (s, _) = kb_internal(
        &t,
        Method::POST,
        PERFORM,
        Some("1"),
        Some(json!({"mode": "SOME"})),
    )
    .await;
    assert_eq!(s, 400);
    // Enabling a prebuilt rule keeps it uncustomised; editing its query customises it.
    let mut r =
        t.s.rules("default")
            .into_iter()
            .find(|r| r["rule_id"] == json!(ml_id))
            .unwrap();
    let id = r["id"].clone();
    let (s, v) = t
        .kb(
            Method::POST,
            "/api/detection_engine/rules/_bulk_action",
            Some(json!({"action": "enable", "ids": [id]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let stored =
        t.s.rules("default")
            .into_iter()
            .find(|r| r["rule_id"] == json!(ml_id))
            .unwrap();
    assert_eq!(
        (
            stored["enabled"].clone(),
            stored["rule_source"]["is_customized"].clone()
        ),
        (json!(true), json!(false))
    );
    r["anomaly_threshold"] = json!(50);
    for k in [
        "id",
        "created_at",
        "updated_at",
        "created_by",
        "updated_by",
        "revision",
        "immutable",
        "rule_source",
    ] {
        r.as_object_mut().unwrap().remove(k);
    }
    let (s, v) = t
        .kb(Method::PUT, "/api/detection_engine/rules", Some(r))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["rule_source"]["is_customized"], true);

    // 8.17 without the package (air-gapped): nothing installable.
    let t = T::with(kibana_profile("8.17.0", false)).await;
    let (_, v) = kb_internal(&t, Method::POST, REVIEW, Some("1"), None).await;
    assert_eq!(v["rules"], json!([]));

    // 9.4: paged review (default 20 a page), Elastic's 9.4 versions and the `_ea` job.
    let t = T::with(kibana_profile("9.4.0", true)).await;
    let (_, v) = kb_internal(&t, Method::POST, REVIEW, Some("1"), Some(json!({}))).await;
    assert_eq!(v["page"], 1);
    assert_eq!(v["rules"].as_array().unwrap().len(), 20);
    let total = v["total"].as_u64().unwrap();
    let (_, v) = kb_internal(
        &t,
        Method::POST,
        REVIEW,
        Some("1"),
        Some(json!({"page": 1, "per_page": 500})),
    )
    .await;
    assert_eq!(v["rules"].as_array().unwrap().len() as u64, total);
    let ml = v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule_id"] == json!(ml_id))
        .unwrap();
    assert_ne!(ml["version"].as_u64(), Some(ml_before));
    assert_eq!(
        ml["machine_learning_job_id"],
        json!(["dga_high_sum_probability_ea"])
    );
    let (s, _) = kb_internal(
        &t,
        Method::POST,
        REVIEW,
        Some("1"),
        Some(json!({"per_page": 501})),
    )
    .await;
    assert_eq!(s, 400);

    // 9.5: `_perform` answers rule_id and version only.
    let t = T::with(kibana_profile("9.5.0", true)).await;
    let (_, v) = kb_internal(
        &t,
        Method::POST,
        PERFORM,
        Some("1"),
        Some(json!({"mode": "ALL_RULES"})),
    )
    .await;
    let created = v["results"]["created"].as_array().unwrap();
    assert!(!created.is_empty());
    assert!(
        created.iter().all(|c| c.as_object().unwrap().len() == 2),
        "{created:?}"
    );
    assert!(
        t.s.off_spec_requests().is_empty(),
        "{:?}",
        t.s.off_spec_requests()
    );
}

/// A custom query rule's create body with `extra` fields added.
fn rule_body(rule_id: &str, extra: Value) -> Value {
    let mut b = json!({"rule_id": rule_id, "name": "r", "description": "d", "type": "query",
        "query": "x:1", "language": "kuery", "risk_score": 21, "severity": "low",
        "index": ["logs-*"]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

const RULES: &str = "/api/detection_engine/rules";

/// Rule fields per Kibana version (`kibana_fields.rs`): `setup` is refused in bodies before
/// 8.12 (io-ts `exactCheck`: 400 "invalid keys"), dropped 8.12–8.13 (zod strips), accepted
/// from 8.14; `required_fields` accepted from 8.15; responses carry `setup` from 8.3 and
/// `rule_source` from 8.16. A field refused or dropped counts as off-spec.
#[tokio::test]
async fn kibana_rule_fields_follow_the_version_profile() {
    let setup = json!({"setup": "## Setup\n\nread me"});
    // 7.17: neither in bodies nor in responses.
    let t = T::with(kibana_profile("7.17.29", false)).await;
    let (s, v) = t
        .kb(Method::POST, RULES, Some(rule_body("a", setup.clone())))
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"], "Bad Request");
    assert_eq!(v["message"], "[request body]: invalid keys \"setup\"");
    assert_eq!(t.s.off_spec_requests().len(), 1);
    let (s, v) = t
        .kb(Method::POST, RULES, Some(rule_body("a", json!({}))))
        .await;
    assert_eq!(s, 200, "{v}");
    for k in [
        "setup",
        "related_integrations",
        "required_fields",
        "rule_source",
    ] {
        assert!(v.get(k).is_none(), "7.17 answers no {k}: {v}");
    }

    // 8.11: responses carry setup (8.3+), bodies still refuse it, on update too.
    let t = T::with(kibana_profile("8.11.4", false)).await;
    let (s, v) = t
        .kb(Method::POST, RULES, Some(rule_body("a", json!({}))))
        .await;
    assert_eq!((s, v["setup"].clone()), (200, json!("")), "{v}");
    assert!(v.get("rule_source").is_none(), "{v}");
    let (s, v) = t
        .kb(Method::PUT, RULES, Some(rule_body("a", setup.clone())))
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["message"], "[request body]: invalid keys \"setup\"");

    // 8.13: dropped without a word (and counted as off-spec).
    let t = T::with(kibana_profile("8.13.4", false)).await;
    let (s, v) = t
        .kb(Method::POST, RULES, Some(rule_body("a", setup.clone())))
        .await;
    assert_eq!((s, v["setup"].clone()), (200, json!("")), "{v}");
    assert_eq!(t.s.off_spec_requests().len(), 1);

    // 8.14: setup kept; required_fields still dropped (8.15).
    let t = T::with(kibana_profile("8.14.3", false)).await;
    let rf =
        json!({"required_fields": [{"name": "ml_is_dga.malicious_probability", "type": "float"}]});
    let (s, v) = t
        .kb(Method::POST, RULES, Some(rule_body("a", setup.clone())))
        .await;
    assert_eq!(
        (s, v["setup"].clone()),
        (200, setup["setup"].clone()),
        "{v}"
    );
    assert_eq!(t.s.off_spec_requests().len(), 0);
    let (s, v) = t
        .kb(Method::POST, RULES, Some(rule_body("b", rf.clone())))
        .await;
    assert_eq!((s, v["required_fields"].clone()), (200, json!([])), "{v}");
    assert_eq!(t.s.off_spec_requests().len(), 1);

    // 9.2: everything, and rule_source on custom rules.
    let t = T::with(kibana_profile("9.2.0", false)).await;
    let mut extra = setup.clone();
    extra["required_fields"] = rf["required_fields"].clone();
    let (s, v) = t.kb(Method::POST, RULES, Some(rule_body("a", extra))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["rule_source"], json!({"type": "internal"}));
    assert_eq!(
        v["required_fields"][0]["name"],
        "ml_is_dga.malicious_probability"
    );
    assert_eq!(t.s.off_spec_requests().len(), 0);
}

/// A starting Kibana (`Standin::kibana_starting`): every route 503 "Kibana server is not ready
/// yet" with `Retry-After: 30`, before authentication; from 8.0 `/api/status` answers 503 with
/// the redacted status, level `unavailable`. Counted per request, or until `kibana_ready`.
#[tokio::test]
async fn kibana_starting_answers_not_ready() {
    let t = T::with(kibana_profile("8.17.0", false)).await;
    t.s.kibana_starting(Some(2));
    let (s, _, v) = t
        .raw(&t.s.kibana_url(), Method::GET, "/api/status", None)
        .await;
    assert_eq!(s.as_u16(), 503);
    assert_eq!(v, json!({"status": {"overall": {"level": "unavailable"}}}));
    let r = reqwest::get(format!(
        "{}/api/detection_engine/rules/_find",
        t.s.kibana_url()
    ))
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 503, "no credentials asked");
    assert_eq!(r.headers()["retry-after"], "30");
    assert_eq!(r.text().await.unwrap(), "Kibana server is not ready yet");
    let (s, v) = t.kb(Method::GET, "/api/status", None).await;
    assert_eq!(
        (s, v["status"]["overall"]["level"].clone()),
        (200, json!("available"))
    );

    // 7.17: the not-ready server answers /api/status like any route; until flipped.
    let t = T::with(kibana_profile("7.17.29", false)).await;
    t.s.kibana_starting(None);
    for _ in 0..3 {
        let (s, h, _) = t
            .raw(&t.s.kibana_url(), Method::GET, "/api/status", None)
            .await;
        assert_eq!(
            (s.as_u16(), h["retry-after"].to_str().unwrap()),
            (503, "30")
        );
    }
    t.s.kibana_ready();
    let (s, _) = t.kb(Method::GET, "/api/status", None).await;
    assert_eq!(s, 200);
}
