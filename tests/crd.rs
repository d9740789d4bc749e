//! The DgaModel CRD on a real kube-apiserver: schema, defaults, status subresource, finalizers,
//! printer columns, and the committed YAML.

mod support;

use std::time::Duration;

use dga_operator::api::{ConditionStatus, DgaModel, DgaModelStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{TestNs, wait_for};

#[test]
fn committed_crd_matches_the_code() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/dgamodels.dgaoperator.io.yaml"
    ))
    .expect("crds/dgamodels.dgaoperator.io.yaml exists");
    assert!(
        committed == dga_operator::api::crd_yaml(),
        "crds/ is stale: run `cargo run -- crd > crds/dgamodels.dgaoperator.io.yaml`"
    );
}

fn model(name: &str, spec: serde_json::Value) -> DgaModel {
    serde_json::from_value(json!({
        "apiVersion": "dgaoperator.io/v1alpha1", "kind": "DgaModel",
        "metadata": {"name": name}, "spec": spec
    }))
    .expect("valid DgaModel json")
}

#[tokio::test]
async fn round_trip_defaults_status_generation_and_finalizer() {
    let ns = TestNs::new("crd").await;
    let api: Api<DgaModel> = ns.api();
    let created = api
        .create(
            &PostParams::default(),
            &model(
                "dga",
                json!({"releaseTag": "ML-DGA-20201129-25", "clusterRef": {"secretName": "es"}}),
            ),
        )
        .await
        .expect("create");
    assert!(!created.spec.overwrite);
    assert!(!created.spec.suspend);
    assert_eq!(
        created.spec.deletion_policy,
        dga_operator::api::DeletionPolicy::Delete,
        "schema default applied"
    );
    let gen1 = created.metadata.generation.unwrap();

    // Status goes through the subresource and does not bump the generation.
    let status = json!({"status": {
        "observedGeneration": gen1, "installedTag": "ML-DGA-20201129-25", "modelId": "dga_1611725_2.0", "state": "Installed",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Installed", "message": "ok",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    let after = api
        .patch_status("dga", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status patch");
    let st: &DgaModelStatus = after.status.as_ref().unwrap();
    assert_eq!(st.conditions[0].status, ConditionStatus::True);
    assert_eq!(after.metadata.generation, Some(gen1));
    // A status sent through the main resource is ignored.
    let ignored = api
        .patch(
            "dga",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"modelId": "hijack"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        ignored.status.unwrap().model_id.as_deref(),
        Some("dga_1611725_2.0")
    );

    // A spec change bumps the generation.
    let bumped = api
        .patch(
            "dga",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"releaseTag": "ML-DGA-20210126-1"}})),
        )
        .await
        .unwrap();
    assert_eq!(bumped.metadata.generation, Some(gen1 + 1));

    // kubectl shows the printer columns.
    let out = support::kubectl(&["get", "dga", "-n", &ns.name]);
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().next().unwrap_or_default().to_string();
    for col in ["NAME", "RELEASE", "STATE", "RULES", "AGE"] {
        assert!(header.contains(col), "column {col} missing in {header:?}");
    }
    // The installed release, not the wanted one (the spec was just bumped).
    assert!(
        text.contains("ML-DGA-20201129-25")
            && !text.contains("ML-DGA-20210126-1")
            && text.contains("Installed"),
        "{text}"
    );
    let out = support::kubectl(&["get", "dga", "-n", &ns.name, "-o", "wide"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let header = text.lines().next().unwrap_or_default().to_string();
    for col in ["WANTED", "MODEL", "READY", "MESSAGE"] {
        assert!(
            header.contains(col),
            "wide column {col} missing in {header:?}"
        );
    }
    assert!(
        text.contains("ML-DGA-20210126-1") && text.contains("dga_1611725_2.0"),
        "{text}"
    );

    // A finalizer holds deletion until it is removed.
    api.patch(
        "dga",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"finalizers": ["dgaoperator.io/cleanup"]}})),
    )
    .await
    .unwrap();
    api.delete("dga", &DeleteParams::default()).await.unwrap();
    let held = api
        .get("dga")
        .await
        .expect("still there while the finalizer is set");
    assert!(held.metadata.deletion_timestamp.is_some());
    api.patch(
        "dga",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    let gone = wait_for(Duration::from_secs(10), || async {
        api.get_opt("dga").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(gone.is_some(), "object removed once the finalizer is gone");
    ns.cleanup().await;
}

#[tokio::test]
async fn schema_rejects_invalid_objects() {
    let ns = TestNs::new("crd-invalid").await;
    // Sent as raw JSON so the Rust types cannot pre-filter them.
    let cases = [
        (
            "bad-tag",
            json!({"releaseTag": "ML-DGA-2020-1", "clusterRef": {"secretName": "es"}}),
            "releaseTag",
        ),
        (
            "lower-tag",
            json!({"releaseTag": "ml-dga-20201129-25", "clusterRef": {"secretName": "es"}}),
            "releaseTag",
        ),
        (
            "no-tag",
            json!({"clusterRef": {"secretName": "es"}}),
            "releaseTag",
        ),
        (
            "no-ref",
            json!({"releaseTag": "ML-DGA-20201129-25"}),
            "clusterRef",
        ),
        (
            "empty-ref",
            json!({"releaseTag": "ML-DGA-20201129-25", "clusterRef": {}}),
            "clusterRef",
        ),
        (
            "both-refs",
            json!({"releaseTag": "ML-DGA-20201129-25", "clusterRef": {"secretName": "es", "name": "quickstart"}}),
            "clusterRef",
        ),
        (
            "bad-policy",
            json!({"releaseTag": "ML-DGA-20201129-25", "clusterRef": {"secretName": "es"}, "deletionPolicy": "Orphan"}),
            "deletionPolicy",
        ),
        (
            "bad-sha",
            json!({"releaseTag": "ML-DGA-20201129-25", "clusterRef": {"secretName": "es"}, "source": {"sha256": "abc"}}),
            "sha256",
        ),
        (
            "bad-url",
            json!({"releaseTag": "ML-DGA-20201129-25", "clusterRef": {"secretName": "es"}, "source": {"url": "ftp://x"}}),
            "url",
        ),
        (
            "bad-type",
            json!({"releaseTag": "ML-DGA-20201129-25", "clusterRef": {"secretName": "es"}, "overwrite": "yes"}),
            "overwrite",
        ),
    ];
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &kube::api::ApiResource::erase::<DgaModel>(&()),
    );
    for (name, spec, field) in cases {
        let obj: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "dgaoperator.io/v1alpha1", "kind": "DgaModel", "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        let err = raw
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(name);
        let text = err.to_string();
        assert!(
            text.contains("Invalid") || text.contains("invalid"),
            "{name}: {text}"
        );
        assert!(
            text.contains(field),
            "{name}: the error names {field}: {text}"
        );
    }
    // And a valid one with every field set is accepted.
    raw.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "dgaoperator.io/v1alpha1", "kind": "DgaModel", "metadata": {"name": "full"},
            "spec": {"releaseTag": "ML-DGA-20201129-25", "clusterRef": {"name": "quickstart", "namespace": "elastic"},
                     "source": {"repository": "elastic/detection-rules", "url": "https://mirror.example/x.zip",
                                "sha256": "a".repeat(64)},
                     "overwrite": true, "suspend": true, "deletionPolicy": "Retain"}
        }))
        .unwrap(),
    )
    .await
    .expect("valid object accepted");
    ns.cleanup().await;
}
