//! The Helm chart (charts/dga-operator) and the plain manifests generated from it (deploy/):
//! lint, server-side dry-run against the real kube-apiserver of the test bed, drift against the
//! committed files, Pod Security Standard `restricted`, and RBAC on an allow-list.
//!
//! helm comes from `tests/testbed/helm.sh` ($HELM, else a pinned helm v4 it caches). The
//! dry-run tests need `KUBECONFIG`: run through `tests/testbed/k8s.sh run -- cargo test --test chart`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Value, json};

const CHART: &str = "charts/dga-operator";
const CRD_FILE: &str = "crds/dgamodels.dgaoperator.io.yaml";
const CHART_CRD_FILE: &str = "charts/dga-operator/files/dgamodels.dgaoperator.io.yaml";

/// Values that differ from every default that changes the rendered shape.
const NON_DEFAULT: &[&str] = &[
    "--set=watchNamespace=dga-watched",
    "--set=replicas=2",
    "--set=metrics.serviceMonitor.enabled=true",
    "--set=networkPolicy.enabled=false",
    "--set=crds.install=false",
    "--set=bundles.configMap=dga-bundles",
    "--set=extraArgs[0]=--log-format=json",
    "--set=env[0].name=RUST_LOG",
    "--set=env[0].value=debug",
    "--set=githubToken.existingSecret=github",
];

/// No leader election (so Recreate), a bundle PVC, cluster-wide RBAC.
const NO_LEADER: &[&str] = &[
    "--set=leaderElection.enabled=false",
    "--set=bundles.existingClaim=dga-bundles",
    "--set=crds.keep=false",
];

/// kubectl against `KUBECONFIG`. (Not `support::kubectl`: this file stays independent of the
/// async test-bed module, so chart checks do not break when that module is being changed.)
fn kubectl(args: &[&str]) -> Output {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "this test needs a Kubernetes API server: run it through \
         `tests/testbed/k8s.sh run -- cargo test --test chart` (or set KUBECONFIG)"
    );
    Command::new("kubectl")
        .args(args)
        .output()
        .expect("run kubectl")
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = Command::new(root().join("tests/testbed/helm.sh"))
            .output()
            .expect("run tests/testbed/helm.sh");
        assert!(
            out.status.success(),
            "tests/testbed/helm.sh could not provide helm (set HELM=/path/to/helm v4 to use your own):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert!(path.is_file(), "helm.sh printed {path:?}, which is no file");
        path
    })
}

fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn run_helm(args: &[&str]) -> Output {
    Command::new(helm())
        .args(args)
        .current_dir(root())
        .output()
        .expect("run helm")
}

/// `helm template dga-operator charts/dga-operator -n NS EXTRA...`.
fn template(namespace: &str, extra: &[&str]) -> String {
    let mut args = vec!["template", "dga-operator", CHART, "--namespace", namespace];
    args.extend_from_slice(extra);
    ok(&format!("helm {}", args.join(" ")), run_helm(&args))
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind}, found {}",
        found.len()
    );
    found[0]
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// (a) lint

#[test]
fn helm_lint_passes_also_strict() {
    ok("helm lint", run_helm(&["lint", CHART]));
    ok("helm lint --strict", run_helm(&["lint", "--strict", CHART]));
    ok(
        "helm lint --strict (non-default values)",
        run_helm(&[&["lint", "--strict", CHART][..], NON_DEFAULT].concat()),
    );
    ok(
        "helm lint --strict (no leader election)",
        run_helm(&[&["lint", "--strict", CHART][..], NO_LEADER].concat()),
    );
}

#[test]
fn impossible_value_combinations_are_refused() {
    for (values, why) in [
        (
            &["--set=replicas=2", "--set=leaderElection.enabled=false"][..],
            "leaderElection",
        ),
        (
            &["--set=bundles.configMap=a", "--set=bundles.existingClaim=b"][..],
            "at most one",
        ),
    ] {
        let mut args = vec!["template", "dga-operator", CHART];
        args.extend_from_slice(values);
        let out = run_helm(&args);
        assert!(
            !out.status.success(),
            "helm template {values:?} should fail"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(why),
            "error for {values:?} should mention {why:?}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (b) server-side dry-run against the real apiserver

fn ensure_namespace(name: &str) {
    let out = kubectl(&["create", "namespace", name]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("AlreadyExists"),
        "create namespace {name}: {err}"
    );
}

/// `kubectl apply --dry-run=server` of `yaml`: the apiserver validates every object (schema,
/// defaults, admission) without persisting it.
fn dry_run_apply(what: &str, yaml: &str) -> String {
    let mut file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp file");
    std::io::Write::write_all(&mut file, yaml.as_bytes()).unwrap();
    let path = file.path().to_str().unwrap().to_string();
    let out = ok(
        &format!("kubectl apply --dry-run=server ({what})"),
        kubectl(&["apply", "--dry-run=server", "-f", &path]),
    );
    eprintln!("{what}:\n{out}");
    out
}

/// The apiserver's version, for `helm template --kube-version` (the PodDisruptionBudget's
/// apiVersion depends on it: policy/v1 only exists from 1.21, and the test bed runs 1.20).
fn server_version() -> String {
    let out = ok("kubectl version", kubectl(&["version", "-o", "json"]));
    let v: Value = serde_json::from_str(&out).expect("kubectl version JSON");
    let git = v["serverVersion"]["gitVersion"]
        .as_str()
        .expect("serverVersion.gitVersion");
    // Drop vendor suffixes such as "+k3s1" or "-gke.100": helm wants plain semver.
    let core: String = git
        .trim_start_matches('v')
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    format!("v{core}")
}

/// The ServiceMonitor CRD of the Prometheus Operator is not on the test bed. Rather than filter
/// the ServiceMonitor out, a minimal stand-in CRD (same group, kind and scope; any spec) is
/// installed, so the apiserver still checks that the document's group, version, kind and
/// namespace are right. A cluster that already has the real CRD keeps it.
fn ensure_servicemonitor_crd() {
    let name = "servicemonitors.monitoring.coreos.com";
    if kubectl(&["get", "crd", name]).status.success() {
        return;
    }
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList",
                      "plural": "servicemonitors", "singular": "servicemonitor"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": true
                }}
            }]
        }
    });
    let mut file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    std::io::Write::write_all(&mut file, crd.to_string().as_bytes()).unwrap();
    let path = file.path().to_str().unwrap().to_string();
    let out = kubectl(&["create", "-f", &path]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("AlreadyExists"),
        "create {name}: {err}"
    );
    ok(
        "wait for the ServiceMonitor CRD",
        kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{name}"),
        ]),
    );
}

#[test]
fn default_values_pass_server_dry_run() {
    ensure_namespace("dga-system");
    let version = server_version();
    let yaml = template("dga-system", &["--kube-version", &version]);
    let out = dry_run_apply("default values", &yaml);
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/dgamodels.dgaoperator.io",
        "clusterrole.rbac.authorization.k8s.io/dga-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/dga-operator",
        "role.rbac.authorization.k8s.io/dga-operator-leader-election",
        "deployment.apps/dga-operator",
        "networkpolicy.networking.k8s.io/dga-operator",
        "service/dga-operator-metrics",
        "serviceaccount/dga-operator",
    ] {
        assert!(
            out.contains(object),
            "dry run should mention {object}:\n{out}"
        );
    }
}

#[test]
fn non_default_values_pass_server_dry_run() {
    ensure_namespace("dga-ops");
    ensure_namespace("dga-watched");
    ensure_servicemonitor_crd();
    let version = server_version();
    let yaml = template(
        "dga-ops",
        &[&["--kube-version", &version][..], NON_DEFAULT].concat(),
    );
    let d = docs(&yaml);
    assert!(
        of_kind(&d, "CustomResourceDefinition").is_empty(),
        "crds.install=false"
    );
    assert!(
        of_kind(&d, "NetworkPolicy").is_empty(),
        "networkPolicy.enabled=false"
    );
    assert!(
        of_kind(&d, "ClusterRole").is_empty(),
        "namespaced mode has no ClusterRole"
    );
    assert!(of_kind(&d, "ClusterRoleBinding").is_empty());
    one(&d, "ServiceMonitor");
    assert_eq!(one(&d, "PodDisruptionBudget")["spec"]["minAvailable"], 1);
    let out = dry_run_apply("non-default values", &yaml);
    for object in [
        "role.rbac.authorization.k8s.io/dga-operator",
        "rolebinding.rbac.authorization.k8s.io/dga-operator",
        "servicemonitor.monitoring.coreos.com/dga-operator",
        "poddisruptionbudget.policy/dga-operator",
        "deployment.apps/dga-operator",
    ] {
        assert!(
            out.contains(object),
            "dry run should mention {object}:\n{out}"
        );
    }

    ensure_namespace("dga-solo");
    let yaml = template(
        "dga-solo",
        &[&["--kube-version", &version][..], NO_LEADER].concat(),
    );
    dry_run_apply("no leader election", &yaml);
}

#[test]
fn deploy_manifests_pass_server_dry_run() {
    // The file starts with its Namespace; a dry run does not create it, so create it for real.
    ensure_namespace("dga-system");
    let out = dry_run_apply(
        "deploy/dga-operator.yaml",
        &read("deploy/dga-operator.yaml"),
    );
    assert!(out.contains("deployment.apps/dga-operator"), "{out}");
}

#[test]
fn examples_are_valid_dgamodels() {
    // The DgaModels and Secret of deploy/examples/ against the CRD's schema. The CRD is created
    // for real when missing (a dry-run CRD would not serve its kind) and left in place, as the
    // other test files do; one already installed (by them, the same schema) is kept.
    if !kubectl(&["get", "crd", "dgamodels.dgaoperator.io"])
        .status
        .success()
    {
        let out = kubectl(&["create", "-f", &root().join(CRD_FILE).to_string_lossy()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("AlreadyExists"),
            "create CRD: {err}"
        );
    }
    ok(
        "wait for the DgaModel CRD",
        kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/dgamodels.dgaoperator.io",
        ]),
    );
    for ns in ["default", "security", "elastic-system"] {
        ensure_namespace(ns);
    }
    for example in [
        "secret-cluster",
        "eck-cluster",
        "mirror-url",
        "air-gapped",
        "fleet-package",
    ] {
        let rel = format!("deploy/examples/{example}.yaml");
        let yaml = read(&rel);
        assert!(
            !of_kind(&docs(&yaml), "DgaModel").is_empty(),
            "{rel} holds a DgaModel"
        );
        // Discovery can trail the Established condition by a moment.
        let mut last = String::new();
        let applied = (0..50).any(|_| {
            let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
            std::io::Write::write_all(&mut file, yaml.as_bytes()).unwrap();
            let out = kubectl(&[
                "apply",
                "--dry-run=server",
                "-f",
                file.path().to_str().unwrap(),
            ]);
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            out.status.success() || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                false
            }
        });
        assert!(applied, "{rel} fails a server dry run: {last}");
    }
}

// ---------------------------------------------------------------------------------------------
// (c) drift

#[test]
fn deploy_manifests_match_the_chart() {
    let out = Command::new(root().join("deploy/generate.sh"))
        .arg("-")
        .env("HELM", helm())
        .output()
        .expect("run deploy/generate.sh");
    let rendered = ok("deploy/generate.sh -", out);
    let committed = read("deploy/dga-operator.yaml");
    assert!(
        rendered == committed,
        "deploy/dga-operator.yaml is stale: run deploy/generate.sh and commit the result"
    );
}

#[test]
fn chart_crd_matches_the_committed_crd() {
    assert!(
        read(CHART_CRD_FILE) == read(CRD_FILE),
        "{CHART_CRD_FILE} differs from {CRD_FILE}: cp {CRD_FILE} {CHART_CRD_FILE}"
    );
    // And the template renders exactly that CRD, with only chart labels and annotations added.
    let d = docs(&template("dga-system", &[]));
    let mut rendered = one(&d, "CustomResourceDefinition").clone();
    let meta = rendered["metadata"].as_object_mut().unwrap();
    assert_eq!(meta["annotations"]["helm.sh/resource-policy"], "keep");
    meta.remove("labels");
    meta.remove("annotations");
    let committed: Value = serde_yaml::from_str(&read(CRD_FILE)).unwrap();
    assert_eq!(
        rendered, committed,
        "the chart renders a CRD other than {CRD_FILE}"
    );
}

// ---------------------------------------------------------------------------------------------
// (d) Pod Security Standard `restricted`, flags, RBAC allow-list

fn deployment_of(yaml: &str) -> Value {
    one(&docs(yaml), "Deployment").clone()
}

fn args_of(dep: &Value) -> Vec<String> {
    dep["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The checks of the `restricted` profile (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
fn assert_restricted(pod: &Value) {
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(
            pod[host].is_null() || pod[host] == false,
            "{host} must be off"
        );
    }
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["runAsUser"], 65532);
    assert_eq!(psc["runAsGroup"], 65532);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    let allowed_volumes = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for v in pod["volumes"].as_array().into_iter().flatten() {
        let kinds: Vec<&String> = v
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "name")
            .collect();
        assert!(
            kinds.iter().all(|k| allowed_volumes.contains(&k.as_str())),
            "volume {v} is not allowed by restricted"
        );
    }
    let containers = pod["containers"].as_array().unwrap();
    let init = pod["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for c in containers.iter().chain(init.iter()) {
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{}", c["name"]);
        assert_eq!(sc["runAsUser"], 65532);
        assert_eq!(sc["runAsGroup"], 65532);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert!(sc["privileged"].is_null() || sc["privileged"] == false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert!(sc["capabilities"]["add"].is_null(), "no capabilities added");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        for p in c["ports"].as_array().into_iter().flatten() {
            assert!(p["hostPort"].is_null(), "no hostPort");
        }
    }
}

#[test]
fn pod_meets_restricted_and_runs_with_the_documented_flags() {
    let dep = deployment_of(&template("dga-system", &[]));
    let pod = &dep["spec"]["template"]["spec"];
    assert_restricted(pod);
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(dep["spec"]["replicas"], 1);
    assert_eq!(dep["spec"]["strategy"]["type"], "RollingUpdate");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "ghcr.io/dga-operator/dga-operator:0.1.0");
    assert_eq!(
        c["resources"]["requests"],
        json!({"cpu": "50m", "memory": "64Mi"})
    );
    assert_eq!(c["resources"]["limits"], json!({"memory": "256Mi"}));
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "cache", "mountPath": "/var/cache/dga-operator"}])
    );
    assert_eq!(
        pod["volumes"],
        json!([{"name": "cache", "emptyDir": {"sizeLimit": "2Gi"}}])
    );
    assert_eq!(
        args_of(&dep),
        [
            "run",
            "--resync-period=5m",
            "--github-api=https://api.github.com",
            "--cache-dir=/var/cache/dga-operator",
            "--metrics-addr=0.0.0.0:8080",
            "--concurrency=16",
            "--per-cluster-concurrency=1",
            "--leader-election",
            "--lease-name=dga-operator",
            "--lease-namespace=dga-system",
        ]
    );

    let dep = deployment_of(&template("dga-ops", NON_DEFAULT));
    let pod = &dep["spec"]["template"]["spec"];
    assert_restricted(pod);
    assert_eq!(dep["spec"]["replicas"], 2);
    let args = args_of(&dep);
    for want in [
        "--namespace=dga-watched",
        "--leader-election",
        "--lease-namespace=dga-ops",
        "--bundle-dir=/bundles",
        "--log-format=json",
    ] {
        assert!(
            args.contains(&want.to_string()),
            "{want} missing from {args:?}"
        );
    }
    assert_eq!(
        args.last().unwrap(),
        "--log-format=json",
        "extraArgs come last"
    );
    let c = &pod["containers"][0];
    let env = c["env"].as_array().unwrap();
    assert!(env.contains(&json!({"name": "RUST_LOG", "value": "debug"})));
    assert!(env.contains(&json!({"name": "GITHUB_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "github", "key": "token"}}})));
    assert!(
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "bundles", "mountPath": "/bundles", "readOnly": true}))
    );
    assert!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "bundles", "configMap": {"name": "dga-bundles"}}))
    );

    let dep = deployment_of(&template("dga-solo", NO_LEADER));
    assert_restricted(&dep["spec"]["template"]["spec"]);
    assert_eq!(dep["spec"]["strategy"], json!({"type": "Recreate"}));
    let args = args_of(&dep);
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--lease") || a == "--leader-election"),
        "{args:?}"
    );
    assert!(args.contains(&"--bundle-dir=/bundles".to_string()));
    assert!(
        dep["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .contains(&json!({
                "name": "bundles",
                "persistentVolumeClaim": {"claimName": "dga-bundles", "readOnly": true}
            }))
    );
    let d = docs(&template("dga-solo", NO_LEADER));
    assert!(
        of_kind(&d, "Role").is_empty(),
        "no leader-election Role without leader election"
    );
}

/// The install notes print the Argo CD health rule for `argocd-cm`, exactly as shipped in
/// deploy/argocd/health.lua (the chart's files/ copy is checked byte for byte by tests/gitops.rs).
#[test]
fn install_notes_carry_the_argocd_health_rule() {
    let out = ok(
        "helm install --dry-run=client",
        run_helm(&[
            "install",
            "dga-operator",
            CHART,
            "--namespace",
            "dga-system",
            "--dry-run=client",
        ]),
    );
    let notes = &out[out.find("NOTES:").expect("helm prints NOTES")..];
    assert!(
        notes.contains("resource.customizations.health.dgaoperator.io_DgaModel: |"),
        "{notes}"
    );
    let lua = std::fs::read_to_string(root().join("deploy/argocd/health.lua")).unwrap();
    let key = notes
        .find("io_DgaModel: |\n")
        .expect("the argocd-cm key ends its line");
    let block = &notes[key + "io_DgaModel: |\n".len()..];
    let indented: String = lua.lines().map(|l| format!("         {l}\n")).collect();
    assert!(
        block.starts_with(&indented),
        "NOTES do not carry health.lua as a block scalar:\n{notes}"
    );
}

/// Everything the operator may do, as (apiGroup, resource, verb). Each entry is a call the
/// operator makes (tests/rbac.rs audits this against the requests of a real run); the chart must
/// grant exactly these, nothing more (no wildcards, no writes outside DgaModels and Events;
/// Secrets are listed and watched for their metadata only, so a fix is seen at once).
const WATCHED_NAMESPACE_RULES: &[(&str, &str, &str)] = &[
    ("dgaoperator.io", "dgamodels", "list"),
    ("dgaoperator.io", "dgamodels", "watch"),
    ("dgaoperator.io", "dgamodels", "patch"), // finalizer (merge patch with resourceVersion)
    ("dgaoperator.io", "dgamodels/status", "patch"),
    ("", "secrets", "get"),
    ("", "secrets", "list"),
    ("", "secrets", "watch"),
    ("", "secrets", "patch"), // secret-protection finalizer (merge patch with resourceVersion)
    ("elasticsearch.k8s.elastic.co", "elasticsearches", "get"),
    ("elasticsearch.k8s.elastic.co", "elasticsearches", "list"),
    ("elasticsearch.k8s.elastic.co", "elasticsearches", "watch"),
    ("kibana.k8s.elastic.co", "kibanas", "get"),
    ("kibana.k8s.elastic.co", "kibanas", "list"),
    ("kibana.k8s.elastic.co", "kibanas", "watch"),
    (
        "stackconfigpolicy.k8s.elastic.co",
        "stackconfigpolicies",
        "list",
    ),
    ("", "services", "get"),
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
];

/// Leader election, in the release namespace only.
const LEASE_RULES: &[(&str, &str, &str)] = &[
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "update"),
];

fn granted(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        assert!(
            rule["nonResourceURLs"].is_null(),
            "no nonResourceURLs: {rule}"
        );
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    let (g, r, v) = (
                        g.as_str().unwrap(),
                        r.as_str().unwrap(),
                        v.as_str().unwrap(),
                    );
                    assert!(
                        g != "*" && r != "*" && v != "*",
                        "wildcard in {}: {rule}",
                        role["metadata"]["name"]
                    );
                    out.insert((g.to_string(), r.to_string(), v.to_string()));
                }
            }
        }
    }
    out
}

fn set(rules: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    rules
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect()
}

#[test]
fn rbac_grants_only_the_allow_list() {
    // Cluster-wide mode (default).
    let d = docs(&template("dga-system", &[]));
    let cluster_role = one(&d, "ClusterRole");
    let mut cluster_wide = set(WATCHED_NAMESPACE_RULES);
    cluster_wide.extend(set(&[(
        "authorization.k8s.io",
        "subjectaccessreviews",
        "create",
    )]));
    assert_eq!(
        granted(cluster_role),
        cluster_wide,
        "the ClusterRole must grant exactly the allow-list"
    );
    let binding = one(&d, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], cluster_role["metadata"]["name"]);
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "dga-operator", "namespace": "dga-system"}])
    );
    let lease_role = one(&d, "Role");
    assert_eq!(lease_role["metadata"]["namespace"], "dga-system");
    assert_eq!(granted(lease_role), set(LEASE_RULES));
    // get/update only on the operator's own Lease.
    for rule in lease_role["rules"].as_array().unwrap() {
        if rule["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v != "create")
        {
            assert_eq!(rule["resourceNames"], json!(["dga-operator"]), "{rule}");
        }
    }
    let lease_binding = one(&d, "RoleBinding");
    assert_eq!(lease_binding["metadata"]["namespace"], "dga-system");
    assert_eq!(
        lease_binding["roleRef"]["name"],
        lease_role["metadata"]["name"]
    );

    // Namespaced mode: the same rules as a Role in the watched namespace, leases in the release's.
    let d = docs(&template("dga-ops", NON_DEFAULT));
    let roles = of_kind(&d, "Role");
    assert_eq!(roles.len(), 2);
    for role in roles {
        match role["metadata"]["namespace"].as_str() {
            Some("dga-watched") => assert_eq!(granted(role), set(WATCHED_NAMESPACE_RULES)),
            Some("dga-ops") => assert_eq!(granted(role), set(LEASE_RULES)),
            other => panic!("Role in unexpected namespace {other:?}"),
        }
    }
    for binding in of_kind(&d, "RoleBinding") {
        assert_eq!(binding["subjects"][0]["namespace"], "dga-ops");
        assert_eq!(binding["subjects"][0]["name"], "dga-operator");
    }

    // Every rule in the templates carries a comment saying why.
    let rbac = read("charts/dga-operator/templates/rbac.yaml");
    let lines: Vec<&str> = rbac.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("- apiGroups:") {
            assert!(
                lines[i - 1].trim_start().starts_with('#'),
                "rbac.yaml line {}: a rule without a comment saying why",
                i + 1
            );
        }
    }
}

#[test]
fn network_policy_limits_ingress_to_metrics() {
    let d = docs(&template("dga-system", &[]));
    let np = one(&d, "NetworkPolicy");
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        np["spec"]["ingress"],
        json!([{"ports": [{"port": "metrics", "protocol": "TCP"}], "from": [{"namespaceSelector": {}}]}])
    );
    let egress = np["spec"]["egress"].as_array().unwrap();
    let ports: BTreeSet<i64> = egress
        .iter()
        .flat_map(|r| {
            r["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["port"].as_i64().unwrap())
        })
        .collect();
    assert_eq!(ports, BTreeSet::from([53, 443, 5601, 6443, 9200]));
    let svc = one(&d, "Service");
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}])
    );
    assert!(of_kind(&d, "ServiceMonitor").is_empty());
    assert!(of_kind(&d, "PodDisruptionBudget").is_empty());
}

#[test]
fn readme_documents_every_value() {
    let values: Value = serde_yaml::from_str(&read("charts/dga-operator/values.yaml")).unwrap();
    let readme = read("charts/dga-operator/README.md");
    // Leaf paths; a map documented as a whole (resources, securityContext, ...) covers its keys.
    fn walk(prefix: &str, v: &Value, readme: &str, missing: &mut Vec<String>) {
        if !prefix.is_empty() && readme.contains(&format!("| `{prefix}` |")) {
            return;
        }
        match v.as_object() {
            Some(map) if !map.is_empty() => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, readme, missing);
                }
            }
            _ => missing.push(prefix.to_string()),
        }
    }
    let mut missing = Vec::new();
    walk("", &values, &readme, &mut missing);
    assert!(
        missing.is_empty(),
        "values missing from the README's table: {missing:?}"
    );
}
