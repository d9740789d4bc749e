//! The Kibana client and the rule reconciliation, against the stand-in: rules are created once,
//! repaired when edited, restored when deleted, deleted when no longer wanted, and never touched
//! when they are not ours. Every request must be on spec.

use dga_operator::error::{Error, Service};
use dga_operator::kibana::rules::{self, RuleAction, RulesInput};
use dga_operator::kibana::{Auth, DGA_TAG, KibanaClient, desired_rules, diff, owner_tag};
use dga_standin::{Standin, StandinConfig};
use serde_json::{Value, json};

const OWNER: &str = "security/dga";
const PREDICTION: &str = rules::RULE_PREDICTION;
const PROBABILITY: &str = rules::RULE_PROBABILITY;
const SUNBURST: &str = rules::RULE_SUNBURST;
const ML: &str = rules::RULE_ML_HIGH_SUM;

async fn standin() -> Standin {
    Standin::start(Default::default()).await.unwrap()
}

fn client_with(s: &Standin, auth: Auth) -> KibanaClient {
    KibanaClient::new(reqwest::Client::new(), &s.kibana_url(), auth)
}

fn client(s: &Standin) -> KibanaClient {
    client_with(
        s,
        Auth::Basic {
            username: "elastic".into(),
            password: "changeme".into(),
        },
    )
}

fn input() -> RulesInput {
    RulesInput {
        owner: OWNER.into(),
        ..Default::default()
    }
}

/// One pass: observe, diff, apply everything but conflicts. Returns the planned actions.
async fn reconcile(c: &KibanaClient, space: &str, input: &RulesInput) -> Vec<RuleAction> {
    let desired = desired_rules(input);
    let own = owner_tag(&input.owner);
    let observed = rules::observe(c, space, &desired, &own).await.unwrap();
    let actions = diff(&desired, &observed, &own);
    for a in &actions {
        if !matches!(a, RuleAction::Conflict { .. }) {
            rules::apply(c, space, a).await.unwrap();
        }
    }
    actions
}

fn writes(s: &Standin) -> usize {
    s.requests().iter().filter(|r| r.is_write()).count()
}

fn stored(s: &Standin, space: &str, rule_id: &str) -> Option<Value> {
    s.rules(space)
        .into_iter()
        .find(|r| r["rule_id"] == json!(rule_id))
}

fn assert_on_spec(s: &Standin) {
    let off = s.off_spec_requests();
    assert!(off.is_empty(), "off-spec requests: {off:#?}");
}

#[tokio::test]
async fn status_reports_version_and_level() {
    let s = standin().await;
    let st = client(&s).status().await.unwrap();
    assert_eq!(st.version, "8.17.0");
    assert_eq!(st.level, "available");
    assert_on_spec(&s);
}

#[tokio::test]
async fn rules_are_created_once_and_a_second_pass_writes_nothing() {
    let s = standin().await;
    let c = client(&s);
    for space in ["default", "secops"] {
        let a = reconcile(&c, space, &input()).await;
        assert_eq!(a.len(), 4, "{a:?}");
        assert!(a.iter().all(|a| matches!(a, RuleAction::Create(_))));
        let held = s.rules(space);
        assert_eq!(held.len(), 4);
        for r in &held {
            let tags = r["tags"].to_string();
            assert!(tags.contains(DGA_TAG) && tags.contains("dga-operator:owner:security/dga"));
            assert_eq!(r["enabled"], true);
        }
        let ml = stored(&s, space, ML).unwrap();
        assert_eq!(ml["type"], "machine_learning");
        assert_eq!(ml["anomaly_threshold"], 70);

        let before = writes(&s);
        let a = reconcile(&c, space, &input()).await;
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(writes(&s), before, "the second pass must not write");
        assert_eq!(s.rules(space).len(), 4, "never a second copy");
    }
    // The space prefix was used for the named space only.
    let reqs = s.requests();
    assert!(
        reqs.iter()
            .any(|r| r.path.starts_with("/s/secops/api/detection_engine/rules"))
    );
    assert!(
        reqs.iter()
            .any(|r| r.path.starts_with("/api/detection_engine/rules"))
    );
    assert!(!reqs.iter().any(|r| r.path.starts_with("/s/default")));
    assert_on_spec(&s);
}

#[tokio::test]
async fn a_rule_edited_by_hand_is_repaired() {
    let s = standin().await;
    let c = client(&s);
    reconcile(&c, "default", &input()).await;
    let mut r = stored(&s, "default", PROBABILITY).unwrap();
    r["query"] = json!("ml_is_dga.malicious_probability > 0.5");
    r["risk_score"] = json!(5);
    s.put_rule("default", r);

    let desired = desired_rules(&input());
    let own = owner_tag(OWNER);
    let observed = rules::observe(&c, "default", &desired, &own).await.unwrap();
    let a = diff(&desired, &observed, &own);
    assert_eq!(a.len(), 1, "{a:?}");
    let RuleAction::Update {
        rule_id, reason, ..
    } = &a[0]
    else {
        panic!("{a:?}")
    };
    assert_eq!(rule_id, PROBABILITY);
    assert!(
        reason.contains("query") && reason.contains("risk_score"),
        "{reason}"
    );
    rules::apply(&c, "default", &a[0]).await.unwrap();

    let r = stored(&s, "default", PROBABILITY).unwrap();
    assert_eq!(r["query"], "ml_is_dga.malicious_probability > 0.98");
    assert_eq!(r["risk_score"], 21);
    let before = writes(&s);
    assert!(reconcile(&c, "default", &input()).await.is_empty());
    assert_eq!(writes(&s), before);
    assert_on_spec(&s);
}

#[tokio::test]
async fn the_users_enable_or_disable_wins() {
    let s = standin().await;
    let c = client(&s);
    reconcile(&c, "default", &input()).await;

    // Disabled by hand: no update for that alone.
    let mut r = stored(&s, "default", SUNBURST).unwrap();
    r["enabled"] = json!(false);
    s.put_rule("default", r);
    let before = writes(&s);
    assert!(reconcile(&c, "default", &input()).await.is_empty());
    assert_eq!(writes(&s), before);

    // Disabled and drifted: the repair keeps it disabled.
    let mut r = stored(&s, "default", SUNBURST).unwrap();
    r["severity"] = json!("low");
    s.put_rule("default", r);
    let a = reconcile(&c, "default", &input()).await;
    assert!(matches!(&a[..], [RuleAction::Update { .. }]), "{a:?}");
    let r = stored(&s, "default", SUNBURST).unwrap();
    assert_eq!(r["severity"], "high");
    assert_eq!(r["enabled"], false);

    // spec enabled=false applies to new rules only; rules enabled by hand stay enabled.
    let off = RulesInput {
        enabled: false,
        ..input()
    };
    s.delete_rule("default", ML);
    let a = reconcile(&c, "default", &off).await;
    assert!(matches!(&a[..], [RuleAction::Create(_)]), "{a:?}");
    assert_eq!(stored(&s, "default", ML).unwrap()["enabled"], false);
    assert_eq!(stored(&s, "default", PREDICTION).unwrap()["enabled"], true);
    assert_on_spec(&s);
}

#[tokio::test]
async fn a_rule_deleted_by_hand_comes_back() {
    let s = standin().await;
    let c = client(&s);
    reconcile(&c, "default", &input()).await;
    s.delete_rule("default", PREDICTION);
    let a = reconcile(&c, "default", &input()).await;
    assert!(
        matches!(&a[..], [RuleAction::Create(b)] if b["rule_id"] == PREDICTION),
        "{a:?}"
    );
    assert!(stored(&s, "default", PREDICTION).is_some());
    assert_eq!(s.rules("default").len(), 4);
    assert_on_spec(&s);
}

#[tokio::test]
async fn an_unowned_ml_dga_rule_is_never_touched() {
    let s = standin().await;
    let c = client(&s);
    let foreign = json!({
        "rule_id": "0d4b8a62-aaaa-4bbb-8ccc-000000000001", "type": "query", "language": "kuery",
        "name": "Hand-made DGA rule", "description": "mine", "risk_score": 50, "severity": "medium",
        "query": "ml_is_dga.malicious_probability > 0.9", "tags": [DGA_TAG], "enabled": false,
    });
    c.create_rule("default", &foreign).await.unwrap();
    let before = stored(&s, "default", "0d4b8a62-aaaa-4bbb-8ccc-000000000001").unwrap();

    reconcile(&c, "default", &input()).await;
    let subset = RulesInput {
        selected: Some(vec![ML.into()]),
        ..input()
    };
    let a = reconcile(&c, "default", &subset).await;
    assert_eq!(a.len(), 3, "{a:?}");
    assert!(a.iter().all(|a| matches!(a, RuleAction::Delete { .. })));
    assert!(
        a.iter()
            .all(|a| a.rule_id() != "0d4b8a62-aaaa-4bbb-8ccc-000000000001")
    );
    assert_eq!(
        stored(&s, "default", "0d4b8a62-aaaa-4bbb-8ccc-000000000001").unwrap(),
        before
    );
    assert_on_spec(&s);
}

#[tokio::test]
async fn an_unowned_rule_with_our_rule_id_is_a_conflict() {
    let s = standin().await;
    let c = client(&s);
    let theirs = json!({
        "rule_id": PREDICTION, "type": "query", "language": "kuery", "name": "Old CLI rule",
        "description": "uploaded by hand", "risk_score": 21, "severity": "low",
        "query": "event.category:network and ml_is_dga.malicious_prediction:1", "tags": [DGA_TAG],
    });
    c.create_rule("default", &theirs).await.unwrap();
    let before = stored(&s, "default", PREDICTION).unwrap();

    let desired = desired_rules(&input());
    let own = owner_tag(OWNER);
    let observed = rules::observe(&c, "default", &desired, &own).await.unwrap();
    let a = diff(&desired, &observed, &own);
    let conflict = a
        .iter()
        .find(|a| matches!(a, RuleAction::Conflict { rule_id, .. } if rule_id == PREDICTION))
        .unwrap_or_else(|| panic!("{a:?}"));
    assert_eq!(
        a.iter()
            .filter(|a| matches!(a, RuleAction::Create(_)))
            .count(),
        3
    );
    match rules::apply(&c, "default", conflict).await {
        Err(Error::Conflict(m)) => assert!(m.contains(PREDICTION), "{m}"),
        other => panic!("{other:?}"),
    }
    reconcile(&c, "default", &input()).await;
    assert_eq!(stored(&s, "default", PREDICTION).unwrap(), before);

    // Creating over it is refused by Kibana, named.
    match c.create_rule("default", &desired[0]).await {
        Err(Error::Conflict(m)) => assert!(m.contains(PREDICTION), "{m}"),
        other => panic!("{other:?}"),
    }

    // With overwrite, it becomes ours.
    let observed = rules::observe(&c, "default", &desired, &own).await.unwrap();
    let a = rules::overwrite_conflicts(diff(&desired, &observed, &own), &desired, &observed);
    assert!(matches!(&a[..], [RuleAction::Update { .. }]), "{a:?}");
    rules::apply(&c, "default", &a[0]).await.unwrap();
    let r = stored(&s, "default", PREDICTION).unwrap();
    assert!(r["tags"].to_string().contains(&own));
    assert!(reconcile(&c, "default", &input()).await.is_empty());
    assert_eq!(s.rules("default").len(), 4);
    assert_on_spec(&s);
}

#[tokio::test]
async fn a_selected_subset_deletes_stale_owned_rules_only() {
    let s = standin().await;
    let c = client(&s);
    reconcile(&c, "default", &input()).await;
    // Another DgaPackage's rule in the same space is not ours to delete.
    let other = RulesInput {
        owner: "other/pkg".into(),
        source_rules: vec![json!({
            "rule_id": "c0ffee00-0000-4000-8000-000000000001", "type": "query", "language": "kuery",
            "name": "Other package rule", "description": "d", "risk_score": 21, "severity": "low",
            "query": "ml_is_dga.malicious_prediction:1",
        })],
        ..Default::default()
    };
    reconcile(&c, "default", &other).await;

    let subset = RulesInput {
        selected: Some(vec![PREDICTION.into(), SUNBURST.into()]),
        ..input()
    };
    let a = reconcile(&c, "default", &subset).await;
    let mut deleted: Vec<&str> = a
        .iter()
        .map(|a| match a {
            RuleAction::Delete { rule_id } => rule_id.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    deleted.sort();
    let mut want = vec![PROBABILITY, ML];
    want.sort();
    assert_eq!(deleted, want);
    let mut left: Vec<String> = s
        .rules("default")
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap().to_string())
        .collect();
    left.sort();
    let mut expect = vec![
        PREDICTION.to_string(),
        SUNBURST.to_string(),
        "c0ffee00-0000-4000-8000-000000000001".to_string(),
    ];
    expect.sort();
    assert_eq!(left, expect);
    assert!(reconcile(&c, "default", &subset).await.is_empty());
    assert_on_spec(&s);
}

#[tokio::test]
async fn single_rule_calls_and_paging() {
    let s = standin().await;
    let c = client(&s);
    assert_eq!(c.get_rule("default", PREDICTION).await.unwrap(), None);
    c.delete_rule("default", PREDICTION).await.unwrap();
    let d = desired_rules(&input());
    let created = c.create_rule("secops", &d[0]).await.unwrap();
    assert_eq!(created["rule_id"], PREDICTION);
    let got = c.get_rule("secops", PREDICTION).await.unwrap().unwrap();
    assert_eq!(got["id"], created["id"]);
    assert_eq!(c.get_rule("default", PREDICTION).await.unwrap(), None);
    c.delete_rule("secops", PREDICTION).await.unwrap();
    assert!(s.rules("secops").is_empty());

    for i in 0..230 {
        s.put_rule(
            "default",
            json!({"id": format!("so-{i}"), "rule_id": format!("r-{i}"), "name": format!("r{i}"),
                   "tags": ["Use Case: bulk tag"], "created_at": format!("2025-01-01T00:00:{:03}Z", i)}),
        );
    }
    s.clear_requests();
    let found = c
        .find_rules_by_tag("default", "Use Case: bulk tag")
        .await
        .unwrap();
    assert_eq!(found.len(), 230);
    assert_eq!(s.requests().len(), 3, "three pages of 100");
    assert!(
        c.find_rules_by_tag("default", "nothing")
            .await
            .unwrap()
            .is_empty()
    );
    assert_on_spec(&s);
}

#[tokio::test]
async fn wrong_credentials_are_unauthorized() {
    let s = standin().await;
    let c = client_with(
        &s,
        Auth::Basic {
            username: "elastic".into(),
            password: "wrong".into(),
        },
    );
    for r in [
        c.status().await.map(|_| ()),
        c.find_rules_by_tag("default", DGA_TAG).await.map(|_| ()),
    ] {
        match r {
            Err(e @ Error::Unauthorized { .. }) => {
                assert_eq!(e.service(), Some(Service::Kibana));
                assert!(matches!(e, Error::Unauthorized { status: 401, .. }));
                assert!(!e.to_string().contains("wrong"));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_on_spec(&s);
}

#[tokio::test]
async fn api_key_and_bearer_auth() {
    let mut cfg = StandinConfig::default();
    cfg.auth.api_keys = vec!["aWQ6a2V5".into()];
    cfg.auth.bearer = vec!["tok".into()];
    let s = Standin::start(cfg).await.unwrap();
    client_with(&s, Auth::ApiKey("aWQ6a2V5".into()))
        .status()
        .await
        .unwrap();
    client_with(&s, Auth::Bearer("tok".into()))
        .status()
        .await
        .unwrap();
    assert!(matches!(
        client_with(&s, Auth::None).status().await,
        Err(Error::Unauthorized { .. })
    ));
    let principals: Vec<Option<String>> = s.requests().into_iter().map(|r| r.principal).collect();
    assert_eq!(principals[0].as_deref(), Some("api_key:id"));
    assert_eq!(principals[1].as_deref(), Some("bearer"));
    assert_on_spec(&s);
}

#[tokio::test]
async fn kibana_down_is_unreachable_or_transient() {
    let s = standin().await;
    s.set_kibana_down(true);
    match client(&s).status().await {
        Err(e) => {
            assert!(e.is_transient(), "{e:?}");
            assert_eq!(e.service(), Some(Service::Kibana));
        }
        Ok(v) => panic!("{v:?}"),
    }
    assert_on_spec(&s);
}

/// A starting Kibana (503 "Kibana server is not ready yet"; `/api/status` level `unavailable`
/// from 8.0) is told apart from a failing one: transient, named, at Kibana's own pace.
#[tokio::test]
async fn a_starting_kibana_is_told_apart() {
    for version in ["7.17.29", "8.17.0", "9.2.0"] {
        let s = Standin::start(StandinConfig {
            kibana_version: version.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        s.kibana_starting(Some(2));
        let c = client(&s);
        for e in [
            c.status().await.unwrap_err(),
            c.find_rules_by_tag("default", DGA_TAG).await.unwrap_err(),
        ] {
            assert!(
                dga_operator::kibana::client::is_starting(&e),
                "{version}: {e:?}"
            );
            assert!(e.is_transient());
            assert!(e.retry_after() >= Some(std::time::Duration::from_secs(30)));
            assert!(e.to_string().starts_with("Kibana is starting"), "{e}");
        }
        assert_eq!(c.status().await.unwrap().version, version);
        assert_on_spec(&s);
    }
    // A Kibana that fails for another reason is not "starting".
    let s = standin().await;
    s.add_fault(dga_standin::Fault {
        service: Some(dga_standin::Service::Kibana),
        method: None,
        path_regex: "^/api/status".into(),
        nth: 1,
        times: 1,
        action: dga_standin::FaultAction::Status {
            code: 503,
            retry_after: None,
            body: None,
        },
    });
    let e = client(&s).status().await.unwrap_err();
    assert!(!dga_operator::kibana::client::is_starting(&e), "{e:?}");
}

/// The built-in rules, and a release rule carrying the newer fields, go to each Kibana
/// version with only the fields its rule bodies accept: the stand-in refuses (before 8.12) or
/// counts as off-spec (8.12 on, where Kibana drops them) anything else.
#[tokio::test]
async fn rule_bodies_carry_only_what_each_kibana_version_accepts() {
    let release = json!({"rule_id": "0b9d0c64-7c79-4b8e-8a0f-3a1d2a6a2b10", "type": "query",
        "language": "kuery", "name": "release rule", "description": "d", "risk_score": 21,
        "severity": "low", "query": "ml_is_dga.malicious_prediction:1", "setup": "## Setup",
        "required_fields": [{"name": "ml_is_dga.malicious_prediction", "type": "long"}],
        "related_integrations": [{"package": "dga", "version": "^2.0.0"}]});
    for version in [
        "7.17.29", "8.8.2", "8.11.4", "8.13.4", "8.14.3", "8.17.0", "9.2.0",
    ] {
        let s = Standin::start(StandinConfig {
            kibana_version: version.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let c = client(&s);
        let k = dga_operator::kibana::KibanaFeatures::new(
            dga_operator::kibana::StackVersion::parse(version).unwrap(),
        );
        for source_rules in [Vec::new(), vec![release.clone()]] {
            let inp = RulesInput {
                source_rules,
                kibana: k,
                ..input()
            };
            reconcile(&c, "default", &inp).await;
            // A second pass writes nothing: no field Kibana dropped makes it differ.
            let before = writes(&s);
            reconcile(&c, "default", &inp).await;
            assert_eq!(writes(&s), before, "{version}: a settled pass wrote");
        }
        assert_on_spec(&s);
        let r = stored(&s, "default", "0b9d0c64-7c79-4b8e-8a0f-3a1d2a6a2b10").unwrap();
        let setup_kept = r.get("setup").and_then(Value::as_str) == Some("## Setup");
        assert_eq!(setup_kept, k.accepts("setup"), "{version}: {r}");
    }
}
