//! The operator as users run it: its image (deploy/image.sh), installed by its Helm chart, as a
//! Pod on a real kubelet (tests/testbed/node.sh: containerd + runc + kubelet 1.20 as node
//! `localhost` of the test control plane), reconciling DgaModels against the stand-in.
//!
//! Run: `tests/testbed/k8s.sh run -- tests/testbed/node.sh run -- cargo test --test node`
//! (tests/run.sh does). Without a node (not root, no containerd/buildah, not under node.sh) every
//! test prints why and passes without running.
//!
//! The test bed's loopback-only control plane needs a few chart values no real cluster needs;
//! they are all in `tests/testbed/node.sh values`. One consequence: every pod shares the host's network
//! namespace, so one Deployment cannot run two replicas here (both would bind the metrics port);
//! the leader-election test runs two releases on one Lease instead, each a Deployment of the
//! chart, which is the same contest between two pods.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dga_standin::bundle::Layout;
use dga_standin::{Fault, FaultAction, Service};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use serde_json::{Value, json};
use support::{Env, kubectl, wait_for};

const TAG: &str = "ML-DGA-20210126-1";
const TAG_B: &str = "ML-DGA-20210127-1";
const IMAGE_REPO: &str = "localhost/dga-operator";
const IMAGE_TAG: &str = "node-test";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The node's folder, or None (with the reason printed) where the tier cannot run.
fn node() -> Option<PathBuf> {
    match std::env::var_os("DGA_NODE_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            let why = std::env::var("DGA_NODE_SKIP")
                .unwrap_or_else(|_| "not run under tests/testbed/node.sh".into());
            eprintln!("node tests skipped: {why}");
            None
        }
    }
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

/// The operator image, built once per run from the binary under test and imported into the
/// node's containerd.
fn image(node: &Path) -> &'static str {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let tar = node.join("operator.oci.tar");
        ok(
            "deploy/image.sh",
            Command::new(root().join("deploy/image.sh"))
                .arg(&tar)
                .arg(format!("{IMAGE_REPO}:{IMAGE_TAG}"))
                .env("DGA_IMAGE_BINARY", env!("CARGO_BIN_EXE_dga-operator"))
                .output()
                .expect("run deploy/image.sh"),
        );
        ok(
            "node.sh import",
            Command::new(root().join("tests/testbed/node.sh"))
                .arg("import")
                .arg(node)
                .arg(&tar)
                .output()
                .expect("run node.sh import"),
        );
    });
    IMAGE_TAG
}

fn helm() -> PathBuf {
    let out = Command::new(root().join("tests/testbed/helm.sh"))
        .output()
        .expect("run tests/testbed/helm.sh");
    PathBuf::from(ok("tests/testbed/helm.sh", out).trim())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The chart values the loopback test bed needs, from `tests/testbed/node.sh values` (the one
/// place they are listed; the quickstart uses them too).
fn testbed_values(metrics_port: u16) -> Value {
    let out = Command::new(root().join("tests/testbed/node.sh"))
        .args(["values", &metrics_port.to_string()])
        .env("DGA_IMAGE_REPO", IMAGE_REPO)
        .env("DGA_IMAGE_TAG", IMAGE_TAG)
        .output()
        .expect("run node.sh values");
    serde_json::from_str(&ok("node.sh values", out)).expect("node.sh values prints JSON")
}

/// One `helm install` of the chart into the test's namespace.
struct Release {
    name: String,
    ns: String,
    metrics_port: u16,
}

impl Release {
    /// `extra`: the test's own values (merged over the test bed's).
    fn install(env: &Env, node: &Path, name: &str, extra: Value) -> Release {
        image(node);
        let ns = env.ns.name.clone();
        let metrics_port = free_port();
        let mut values = testbed_values(metrics_port);
        // The test's own choices: this namespace only (other tests run beside it), the CRD is
        // the harness's, releases come from the stand-in.
        let own = json!({
            "watchNamespace": ns,
            "crds": {"install": false},
            "githubApi": env.standin.github_url(),
            "extraArgs": ["--request-timeout=10s", "--backoff-cap=5s", "--delete-timeout=5s"],
        });
        for (k, v) in own
            .as_object()
            .unwrap()
            .iter()
            .chain(extra.as_object().unwrap())
        {
            values[k] = v.clone();
        }
        let file = env.dir.path().join(format!("{name}-values.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(&values).unwrap()).unwrap();
        ok(
            "helm install",
            Command::new(helm())
                .args(["install", name, "charts/dga-operator", "-n", &ns, "-f"])
                .arg(&file)
                .current_dir(root())
                .output()
                .expect("run helm"),
        );
        Release {
            name: name.into(),
            ns,
            metrics_port,
        }
    }

    fn fullname(&self) -> String {
        format!("{}-dga-operator", self.name)
    }

    async fn pods(&self, env: &Env) -> Vec<Pod> {
        let api: kube::Api<Pod> = env.ns.api();
        let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={}", self.name));
        api.list(&lp).await.map(|l| l.items).unwrap_or_default()
    }

    /// The release's pod that is Running and Ready (through the chart's own probes) and not
    /// being deleted.
    async fn wait_ready_pod(&self, env: &Env) -> Pod {
        let found = wait_for(Duration::from_secs(240), || async {
            self.pods(env).await.into_iter().find(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status.as_ref().is_some_and(|s| {
                        s.phase.as_deref() == Some("Running")
                            && s.conditions
                                .iter()
                                .flatten()
                                .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
            })
        })
        .await;
        found.unwrap_or_else(|| {
            let out = kubectl(&[
                "describe",
                "pods",
                "-n",
                &self.ns,
                "-l",
                &format!("app.kubernetes.io/instance={}", self.name),
            ]);
            panic!(
                "no Ready pod of release {}:\n{}",
                self.name,
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "5", &url])
            .output()
            .expect("run curl");
        ok(&format!("GET {url}"), out)
    }
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |c| c.iter().map(|c| c.restart_count).sum())
}

fn pod_name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap()
}

/// Deletes a pod with a short grace period; does not wait for the object to go (the kubelet's
/// cleanup takes about a minute).
fn delete_pod(ns: &str, pod: &str, grace: u32) {
    ok(
        "kubectl delete pod",
        kubectl(&[
            "delete",
            "pod",
            pod,
            "-n",
            ns,
            &format!("--grace-period={grace}"),
            "--wait=false",
        ]),
    );
}

/// /proc/<pid>/status of the container's main process, found through the node's containerd.
fn container_proc_status(node: &Path, pod: &Pod) -> String {
    let id = pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .container_id
        .clone()
        .expect("container id");
    let id = id.trim_start_matches("containerd://");
    let tasks = ok(
        "ctr tasks ls",
        Command::new("ctr")
            .arg("-a")
            .arg(node.join("containerd.sock"))
            .args(["-n", "k8s.io", "tasks", "ls"])
            .output()
            .expect("run ctr"),
    );
    let pid = tasks
        .lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no task {id} in:\n{tasks}"));
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read the container's /proc status")
}

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim()))
        .unwrap_or_else(|| panic!("no {key} in /proc status"))
}

#[tokio::test]
async fn chart_pod_runs_restricted_reconciles_and_serves_metrics() {
    let Some(node) = node() else { return };
    let env = Env::start_without_controller("node-one").await;
    env.publish(TAG, Layout::V2);
    env.secret("es", "changeme").await;
    let rel = Release::install(&env, &node, "one", json!({}));
    let pod = rel.wait_ready_pod(&env).await;

    // The chart's restricted security context, as the kernel sees the running process.
    let st = container_proc_status(&node, &pod);
    assert_eq!(
        status_field(&st, "Uid:")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["65532"; 4],
        "{st}"
    );
    assert_eq!(
        status_field(&st, "Gid:")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["65532"; 4],
        "{st}"
    );
    assert_eq!(
        status_field(&st, "CapEff:"),
        "0000000000000000",
        "capabilities left: {st}"
    );
    assert_eq!(
        status_field(&st, "CapBnd:"),
        "0000000000000000",
        "capabilities left: {st}"
    );
    assert_eq!(status_field(&st, "NoNewPrivs:"), "1", "{st}");
    assert_eq!(
        status_field(&st, "Seccomp:"),
        "2",
        "no seccomp filter (RuntimeDefault): {st}"
    );

    // A DgaModel reconciled by that pod.
    env.apply(
        "dga",
        json!({"releaseTag": TAG, "clusterRef": {"secretName": "es"}}),
    )
    .await;
    env.wait_ready("dga").await;
    assert!(!env.stack().models().await.is_empty(), "no model installed");
    assert!(env.invariant_violations(false).await.is_empty());

    // /metrics from the pod: the reconcile it just did is counted.
    let m = rel.metrics();
    let reconciles: f64 = m
        .lines()
        .filter(|l| l.starts_with("dga_reconciles_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(reconciles >= 1.0, "no reconcile counted in /metrics:\n{m}");

    // The pod's log through apiserver -> kubelet.
    let logs = ok(
        "kubectl logs",
        kubectl(&["logs", "-n", &rel.ns, &pod_name(&pod)]),
    );
    assert!(!logs.is_empty());
    let pod = rel.wait_ready_pod(&env).await;
    if restarts(&pod) != 0 {
        // Why it restarted: the last state (OOMKilled, exit code, a failed probe in the events)
        // and what the previous container printed last.
        let last = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|c| format!("{:?}", c.iter().map(|c| &c.last_state).collect::<Vec<_>>()))
            .unwrap_or_default();
        let text = |o: std::process::Output| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        };
        let previous = text(kubectl(&[
            "logs",
            "-n",
            &rel.ns,
            &pod_name(&pod),
            "--previous",
        ]));
        let events = text(kubectl(&[
            "get",
            "events",
            "-n",
            &rel.ns,
            "-o",
            "custom-columns=REASON:.reason,MESSAGE:.message",
        ]));
        panic!(
            "the operator restarted: last state {last}\nprevious container:\n{previous}\nevents:\n{events}\ncurrent:\n{logs}"
        );
    }
    env.finish().await;
}

#[tokio::test]
async fn deleting_the_leaders_pod_hands_over_and_the_object_keeps_converging() {
    let Some(node) = node() else { return };
    let env = Env::start_without_controller("node-le").await;
    env.publish(TAG, Layout::V2);
    let mut b = dga_standin::bundle::BundleSpec::small(TAG_B, Layout::V2);
    b.model.seed += 1;
    env.publish_spec(b);
    env.secret("es", "changeme").await;
    let lease_name = "dga-node-le";
    let shared = json!({"leaderElection": {"enabled": true, "leaseName": lease_name}});
    let a = Release::install(&env, &node, "le-a", shared.clone());
    let b = Release::install(&env, &node, "le-b", shared);
    let pa = a.wait_ready_pod(&env).await;
    let pb = b.wait_ready_pod(&env).await;

    let leases: kube::Api<Lease> = env.ns.api();
    let holder = || async {
        leases
            .get_opt(lease_name)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty())
    };
    let first = wait_for(Duration::from_secs(60), holder)
        .await
        .expect("nobody took the Lease");
    let (leader, standby) = if first == pod_name(&pa) {
        (pa, pb)
    } else {
        assert_eq!(first, pod_name(&pb), "the Lease holder is neither pod");
        (pb, pa)
    };
    env.apply(
        "dga",
        json!({"releaseTag": TAG, "clusterRef": {"secretName": "es"}}),
    )
    .await;
    env.wait_ready("dga").await;

    let lease_secs = leases
        .get(lease_name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .lease_duration_seconds
        .unwrap_or(15);
    let start = Instant::now();
    delete_pod(&env.ns.name, &pod_name(&leader), 10);
    let standby_name = pod_name(&standby);
    let took = wait_for(Duration::from_secs(90), || async {
        (holder().await.as_deref() == Some(standby_name.as_str())).then_some(())
    })
    .await;
    assert!(
        took.is_some(),
        "the standby {standby_name} never took the Lease"
    );
    let elapsed = start.elapsed();
    println!(
        "handover after deleting the leader's pod: {:.1}s (lease {lease_secs}s)",
        elapsed.as_secs_f64()
    );
    assert!(
        elapsed < Duration::from_secs(u64::try_from(lease_secs).unwrap()),
        "handover took {elapsed:?}, longer than the lease ({lease_secs}s): the old leader did not give the Lease up"
    );

    // The new leader reconciles: an upgrade converges.
    env.apply(
        "dga",
        json!({"releaseTag": TAG_B, "clusterRef": {"secretName": "es"}}),
    )
    .await;
    let m = env.wait_ready("dga").await;
    assert_eq!(m.status.unwrap().installed_tag.as_deref(), Some(TAG_B));
    assert!(env.invariant_violations(false).await.is_empty());
    env.finish().await;
}

#[tokio::test]
async fn sigterm_from_pod_deletion_lets_the_install_finish_cleanly() {
    let Some(node) = node() else { return };
    let env = Env::start_without_controller("node-term").await;
    env.publish(TAG, Layout::V2);
    env.secret("es", "changeme").await;
    // The one install request that is in flight when the pod is deleted: held for 6 s.
    env.standin.add_fault(Fault {
        service: Some(Service::Es),
        method: Some("PUT".into()),
        path_regex: "^/_ingest/pipeline/".into(),
        nth: 1,
        times: 1,
        action: FaultAction::Delay(Duration::from_secs(6)),
    });
    let rel = Release::install(&env, &node, "term", json!({}));
    let pod = rel.wait_ready_pod(&env).await;
    env.apply(
        "dga",
        json!({"releaseTag": TAG, "clusterRef": {"secretName": "es"}}),
    )
    .await;
    let seen = wait_for(Duration::from_secs(60), || async {
        env.standin
            .requests()
            .iter()
            .any(|r| r.method == "PUT" && r.path.starts_with("/_ingest/pipeline/"))
            .then_some(())
    })
    .await;
    assert!(seen.is_some(), "the install never reached the pipelines");
    // Scale to zero first, so that no replacement pod finishes the job for the old one.
    ok(
        "kubectl scale",
        kubectl(&[
            "scale",
            "deployment",
            &rel.fullname(),
            "-n",
            &rel.ns,
            "--replicas=0",
        ]),
    );
    delete_pod(&rel.ns, &pod_name(&pod), 20);
    let api: kube::Api<Pod> = env.ns.api();
    let name = pod_name(&pod);
    let exit = wait_for(Duration::from_secs(90), || async {
        let p = match api.get_opt(&name).await.ok()? {
            None => return Some(None),
            Some(p) => p,
        };
        let t = p
            .status?
            .container_statuses?
            .first()?
            .state
            .as_ref()?
            .terminated
            .clone()?;
        Some(Some(t.exit_code))
    })
    .await
    .expect("the operator's container did not stop within its grace period");
    if let Some(code) = exit {
        assert_eq!(code, 0, "the operator exited with {code} on SIGTERM");
    }
    // Nothing half-installed: the held request finished and the install with it, or nothing of
    // it is referenced.
    let v = env.invariant_violations(false).await;
    assert!(v.is_empty(), "half-installed after SIGTERM: {v:?}");
    // A new pod picks the object up where the old one left it.
    ok(
        "kubectl scale",
        kubectl(&[
            "scale",
            "deployment",
            &rel.fullname(),
            "-n",
            &rel.ns,
            "--replicas=1",
        ]),
    );
    env.wait_ready("dga").await;
    assert!(env.invariant_violations(false).await.is_empty());
    env.finish().await;
}

#[tokio::test]
async fn a_missing_rbac_verb_is_a_clear_condition_not_a_crash_loop() {
    let Some(node) = node() else { return };
    let env = Env::start_without_controller("node-rbac").await;
    env.publish(TAG, Layout::V2);
    env.secret("es", "changeme").await;
    let rel = Release::install(&env, &node, "rbac", json!({}));
    // Take `get secrets` away from the chart's Role (the metadata-only Secret watch keeps its
    // list/watch: the missing verb is the one a pass needs).
    let role: Value = serde_json::from_str(&ok(
        "kubectl get role",
        kubectl(&["get", "role", &rel.fullname(), "-n", &rel.ns, "-o", "json"]),
    ))
    .unwrap();
    let before: Vec<Value> = role["rules"].as_array().unwrap().clone();
    let mut taken = 0;
    let rules: Vec<Value> = before
        .iter()
        .filter_map(|r| {
            if r["resources"] != json!(["secrets"]) {
                return Some(r.clone());
            }
            let verbs: Vec<Value> = r["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| **v != json!("get"))
                .cloned()
                .collect();
            taken += r["verbs"].as_array().unwrap().len() - verbs.len();
            (!verbs.is_empty()).then(|| json!({"apiGroups": r["apiGroups"], "resources": r["resources"], "verbs": verbs}))
        })
        .collect();
    assert_eq!(taken, 1, "one `get secrets` grant in {role}");
    let patch = json!({"rules": rules}).to_string();
    ok(
        "kubectl patch role",
        kubectl(&[
            "patch",
            "role",
            &rel.fullname(),
            "-n",
            &rel.ns,
            "--type=merge",
            "-p",
            &patch,
        ]),
    );
    rel.wait_ready_pod(&env).await;
    env.apply(
        "dga",
        json!({"releaseTag": TAG, "clusterRef": {"secretName": "es"}}),
    )
    .await;
    let found = wait_for(Duration::from_secs(90), || async {
        let st = env.status("dga").await?;
        st.conditions
            .iter()
            .find(|c| c.message.contains("forbidden") && c.message.contains("secrets"))
            .cloned()
    })
    .await;
    let c = found.unwrap_or_else(|| {
        panic!(
            "no condition names the refused Secret read; status: {:?}",
            futures::executor::block_on(env.status("dga"))
        )
    });
    println!(
        "condition under the reduced Role: {} {} {}",
        c.type_, c.reason, c.message
    );
    // Still running, never restarted, still Ready: a clear error, not a crash loop.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pod = rel.wait_ready_pod(&env).await;
    assert_eq!(
        restarts(&pod),
        0,
        "the operator restarted under a missing verb"
    );
    env.finish().await;
}
