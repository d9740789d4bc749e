//! Running the operator: the `dga-operator run` binary as subprocesses against the real
//! kube-apiserver and the stand-in stack. Leader election on a Lease (one leader, fail-over after
//! SIGKILL, release on SIGTERM), graceful shutdown, and /metrics, /healthz, /readyz.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dga_standin::bundle::Layout;
use dga_standin::{Standin, StandinConfig};
use k8s_openapi::api::coordination::v1::Lease;
use serde_json::{Value, json};
use support::{Env, wait_for};

const LEASE: &str = "dga-operator";

fn spec(tag: &str, secret: &str) -> Value {
    json!({"releaseTag": tag, "clusterRef": {"secretName": secret}})
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `dga-operator run` process; killed when dropped.
struct Operator {
    name: &'static str,
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Operator {
    fn start(env: &Env, name: &'static str) -> Operator {
        Self::start_with(env, name, true)
    }

    fn start_with(env: &Env, name: &'static str, leader_election: bool) -> Operator {
        let port = free_port();
        let log = env.dir.path().join(format!("operator-{name}.log"));
        let cache = env.dir.path().join(format!("cache-{name}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dga-operator"));
        cmd.args(["run", "--namespace", &env.ns.name]);
        if leader_election {
            cmd.args(["--leader-election", "--lease-namespace", &env.ns.name])
                .args(["--lease-name", LEASE]);
        }
        let child = cmd
            .args(["--github-api", &env.standin.github_url()])
            .arg("--cache-dir")
            .arg(&cache)
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--request-timeout", "10s", "--backoff-cap", "5s"])
            .env("RUST_LOG", "info,kube=warn,hyper=warn")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("DGA_WATCH_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start dga-operator");
        Operator {
            name,
            child,
            port,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// This process's holder identity: `<hostname>_<pid>` (no POD_NAME in tests).
    fn holds(&self, holder: &str) -> bool {
        holder.ends_with(&format!("_{}", self.pid()))
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {}", self.pid());
    }

    /// Waits for the process to exit; its exit status, or None on timeout.
    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let resp = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }

    async fn wait_status(&self, path: &str, want: u16) {
        let got = wait_for(Duration::from_secs(30), || async {
            self.get(path).await.filter(|(s, _)| *s == want)
        })
        .await;
        assert!(
            got.is_some(),
            "{}: {path} never answered {want}; logs:\n{}",
            self.name,
            self.logs()
        );
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn lease(env: &Env) -> Option<Lease> {
    env.ns.api::<Lease>().get_opt(LEASE).await.unwrap()
}

fn holder_of(l: &Lease) -> Option<String> {
    l.spec
        .as_ref()?
        .holder_identity
        .clone()
        .filter(|h| !h.is_empty())
}

async fn wait_holder(env: &Env, timeout: Duration, ok: impl Fn(&str) -> bool) -> Option<String> {
    wait_for(timeout, || async {
        let h = holder_of(&lease(env).await?)?;
        ok(&h).then_some(h)
    })
    .await
}

/// Metric samples as (name, labels, value); comments and `# EOF` skipped.
fn samples(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n.to_string(), rest.trim_end_matches('}').to_string()),
                None => (series.to_string(), String::new()),
            };
            Some((name, labels, value.parse().ok()?))
        })
        .collect()
}

fn sample(text: &str, name: &str, labels: &str) -> f64 {
    samples(text)
        .into_iter()
        .filter(|(n, l, _)| n == name && l == labels)
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test]
async fn one_leader_reconciles_and_a_standby_takes_over_after_sigkill() {
    let env = Env::start_without_controller("ops-failover").await;
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.secret("es", "changeme").await;

    let a = Operator::start(&env, "a");
    let b = Operator::start(&env, "b");
    let first = wait_holder(&env, Duration::from_secs(30), |_| true)
        .await
        .expect("nobody took the lease");
    let (leader, standby) = if a.holds(&first) {
        (a, b)
    } else {
        assert!(b.holds(&first), "holder {first} is neither process");
        (b, a)
    };
    // Both answer /readyz (a standby is ready), and the leadership stays put.
    leader.wait_status("/readyz", 200).await;
    standby.wait_status("/readyz", 200).await;
    standby.wait_status("/healthz", 200).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let l = lease(&env).await.unwrap();
    assert_eq!(holder_of(&l).as_deref(), Some(first.as_str()));
    assert_eq!(l.spec.as_ref().unwrap().lease_duration_seconds, Some(15));

    // Only the leader reconciles.
    env.apply("dga", spec(&rel.tag, "es")).await;
    env.wait_ready("dga").await;
    assert!(
        leader.logs().contains("applied"),
        "leader did not log the install:\n{}",
        leader.logs()
    );
    assert!(
        standby.logs().contains("standing by"),
        "standby:\n{}",
        standby.logs()
    );
    assert!(
        !standby.logs().contains("applied") && !standby.logs().contains("became the leader"),
        "the standby reconciled:\n{}",
        standby.logs()
    );

    // The leader dies without releasing: the standby takes over once the lease expires.
    let mut leader = leader;
    leader.signal("-KILL");
    leader.wait_exit(Duration::from_secs(5)).expect("killed");
    let killed = Instant::now();
    let next = wait_holder(&env, Duration::from_secs(15 + 15), |h| standby.holds(h)).await;
    assert!(
        next.is_some(),
        "the standby did not take over; lease {:?}; standby logs:\n{}",
        lease(&env).await.and_then(|l| l.spec),
        standby.logs()
    );
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(15 + 5),
        "take-over took {took:?}"
    );
    let transitions = lease(&env)
        .await
        .unwrap()
        .spec
        .unwrap()
        .lease_transitions
        .unwrap_or(0);
    assert!(transitions >= 1, "leaseTransitions {transitions}");

    // The new leader converges a new DgaModel, on a second Elasticsearch.
    let other = Standin::start(StandinConfig::default()).await.unwrap();
    env.secret_with(
        "es2",
        json!({"url": other.es_url(), "username": "elastic", "password": "changeme"}),
    )
    .await;
    env.apply("dga2", spec(&rel.tag, "es2")).await;
    env.wait_ready("dga2").await;
    assert!(
        !other.models().is_empty(),
        "nothing installed on the second cluster"
    );
    assert!(standby.logs().contains("became the leader"));

    // The new leader also finalizes what the old one installed.
    let api = env.models_api();
    api.delete("dga", &Default::default()).await.unwrap();
    api.delete("dga2", &Default::default()).await.unwrap();
    env.wait_gone("dga").await;
    env.wait_gone("dga2").await;
    assert!(env.standin.pipelines().is_empty() && other.pipelines().is_empty());
    drop(standby);
    env.finish().await;
}

#[tokio::test]
async fn metrics_health_and_readiness_endpoints() {
    let env = Env::start_without_controller("ops-metrics").await;
    let rel = env.publish("ML-DGA-20210126-1", Layout::V2);
    env.secret("es", "changeme").await;
    // Without leader election: ready once the watcher has listed.
    let op = Operator::start_with(&env, "m", false);
    op.wait_status("/healthz", 200).await;
    op.wait_status("/readyz", 200).await;
    let (code, _) = op.get("/nope").await.unwrap();
    assert_eq!(code, 404);

    // A distinctive name: it must appear in no label.
    let name = "cardinality-probe-zq";
    env.apply(name, spec(&rel.tag, "es")).await;
    env.wait_ready(name).await;

    let text = wait_for(Duration::from_secs(20), || async {
        let (code, text) = op.get("/metrics").await?;
        assert_eq!(code, 200);
        (sample(&text, "dga_reconciles_total", r#"result="ok""#) > 0.0
            && sample(&text, "dga_objects", r#"condition="Ready""#) == 1.0)
            .then_some(text)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "metrics never showed the ready object:\n{}",
            futures::executor::block_on(op.get("/metrics"))
                .unwrap_or_default()
                .1
        )
    });
    assert!(
        sample(
            &text,
            "dga_requests_total",
            r#"service="Elasticsearch",code="200""#
        ) > 0.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "dga_requests_total",
            r#"service="Releases",code="200""#
        ) > 0.0,
        "{text}"
    );
    assert!(
        sample(&text, "dga_reconcile_duration_seconds_count", "") > 0.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "dga_time_to_ready_seconds_count", ""),
        1.0,
        "{text}"
    );
    assert!(text.contains("# TYPE dga_drift_repairs counter"), "{text}");

    if std::env::var_os("DGA_PRINT_METRICS").is_some() {
        println!("{text}");
    }
    // Bounded labels only: no object name, namespace or URL in any series.
    for (metric, labels, _) in samples(&text) {
        for bad in [name, env.ns.name.as_str(), "127.0.0.1", "http"] {
            assert!(
                !labels.contains(bad),
                "{metric}{{{labels}}} carries `{bad}`"
            );
        }
        for kv in labels.split(',').filter(|s| !s.is_empty()) {
            let key = kv.split('=').next().unwrap();
            assert!(
                ["result", "service", "code", "condition", "le"].contains(&key),
                "unexpected label {key} on {metric}"
            );
        }
    }

    // Drift: delete a pipeline by hand; the repair is counted.
    let before = sample(&text, "dga_drift_repairs_total", "");
    let pipeline = env.standin.pipelines().keys().next().cloned().unwrap();
    let es = reqwest::Client::new();
    let st = es
        .delete(format!(
            "{}/_ingest/pipeline/{pipeline}",
            env.standin.es_url()
        ))
        .basic_auth("elastic", Some("changeme"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(st.is_success(), "{st}");
    // Trigger a pass now instead of waiting for the resync.
    env.models_api()
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": {"test/poke": "1"}}})),
        )
        .await
        .unwrap();
    let repaired = wait_for(Duration::from_secs(30), || async {
        let (_, text) = op.get("/metrics").await?;
        (sample(&text, "dga_drift_repairs_total", "") > before).then_some(())
    })
    .await;
    assert!(
        repaired.is_some(),
        "no drift repair counted; logs:\n{}",
        op.logs()
    );

    assert!(
        lease(&env).await.is_none(),
        "a Lease without --leader-election"
    );
    env.models_api()
        .delete(name, &Default::default())
        .await
        .unwrap();
    env.wait_gone(name).await;
    let mut op = op;
    op.signal("-TERM");
    let st = op
        .wait_exit(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert_eq!(st.code(), Some(0), "logs:\n{}", op.logs());
    env.finish().await;
}

#[tokio::test]
async fn sigterm_exits_zero_and_releases_the_lease() {
    let env = Env::start_without_controller("ops-sigterm").await;
    let mut a = Operator::start(&env, "a");
    wait_holder(&env, Duration::from_secs(30), |h| a.holds(h))
        .await
        .expect("a leads");
    let mut b = Operator::start(&env, "b");
    b.wait_status("/readyz", 200).await;

    // A standby stops at once and leaves the lease alone.
    b.signal("-TERM");
    let st = b.wait_exit(Duration::from_secs(5)).expect("standby exits");
    assert_eq!(st.code(), Some(0), "standby logs:\n{}", b.logs());
    assert!(a.holds(&holder_of(&lease(&env).await.unwrap()).unwrap()));

    // The leader stops within seconds, exit code 0, and gives the lease up.
    a.wait_status("/readyz", 200).await;
    let t = Instant::now();
    a.signal("-TERM");
    let st = a.wait_exit(Duration::from_secs(10)).expect("leader exits");
    assert_eq!(st.code(), Some(0), "leader logs:\n{}", a.logs());
    assert!(t.elapsed() < Duration::from_secs(10));
    let l = lease(&env).await.unwrap();
    assert_eq!(holder_of(&l), None, "lease not released: {:?}", l.spec);
    assert_eq!(l.spec.unwrap().lease_duration_seconds, Some(1));
    assert!(
        a.logs().contains("released the leader lease"),
        "{}",
        a.logs()
    );
    env.finish().await;
}

#[tokio::test]
async fn a_leader_that_loses_its_lease_stops_with_an_error() {
    let env = Env::start_without_controller("ops-lost").await;
    let mut a = Operator::start(&env, "a");
    wait_holder(&env, Duration::from_secs(30), |h| a.holds(h))
        .await
        .expect("a leads");
    a.wait_status("/readyz", 200).await;

    // Someone else takes the Lease (as after a partition that outlasted the lease).
    let api = env.ns.api::<Lease>();
    let mut l = api.get(LEASE).await.unwrap();
    let spec = l.spec.as_mut().unwrap();
    spec.holder_identity = Some("thief".into());
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        jiff::Timestamp::now(),
    ));
    api.replace(LEASE, &Default::default(), &l).await.unwrap();

    // It notices at its next renewal (every 5s) and exits non-zero without writing the Lease.
    let st = a
        .wait_exit(Duration::from_secs(15))
        .expect("the deposed leader keeps running");
    assert_eq!(st.code(), Some(1), "logs:\n{}", a.logs());
    assert!(a.logs().contains("lost leadership"), "{}", a.logs());
    let l = lease(&env).await.unwrap();
    assert_eq!(holder_of(&l).as_deref(), Some("thief"));
    env.finish().await;
}
