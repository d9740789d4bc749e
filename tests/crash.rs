//! Crash-restart: the `dga-operator run` binary is SIGKILLed while blocked inside its k-th write
//! request (install, upgrade, delete); a fresh process must converge with the invariants holding.
//! Also scans the operators' stderr, status messages and events for the credentials used.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dga_operator::controller::Settings;
use dga_standin::bundle::{BundleSpec, Layout};
use dga_standin::{Auth, RequestRecord, StandinConfig};
use kube::api::DeleteParams;
use serde_json::{Value, json};
use support::{Env, request_key, wait_for};

const TAG_A: &str = "ML-DGA-20210126-1";
const TAG_B: &str = "ML-DGA-20230801-1";
const PASSWORD: &str = "Crash-Pa55w0rd-7f3e9a";
/// An encoded API key (`id:key` base64) the stand-in accepts.
const API_KEY_ID: &str = "crashkeyid";
const API_KEY_SECRET: &str = "crash-api-key-secret-51c0ffee";

fn api_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{API_KEY_ID}:{API_KEY_SECRET}"))
}

fn secrets() -> Vec<String> {
    vec![PASSWORD.into(), API_KEY_SECRET.into(), api_key()]
}

fn spec(tag: &str) -> Value {
    json!({"releaseTag": tag, "clusterRef": {"secretName": "es"}})
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Install,
    Upgrade,
    Delete,
}

struct Operator {
    child: Child,
    log: std::path::PathBuf,
}

impl Operator {
    fn start(env: &Env, name: &str) -> Operator {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = env.dir.path().join(format!("operator-{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_dga-operator"))
            .args(["run", "--namespace", &env.ns.name])
            .args(["--github-api", &env.standin.github_url()])
            .arg("--cache-dir")
            .arg(env.dir.path().join(format!("cache-{name}")))
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--request-timeout", "5s", "--backoff-cap", "2s"])
            .args(["--resync-period", "3s"])
            .env(
                "RUST_LOG",
                "debug,kube=info,hyper=info,hyper_util=info,rustls=info,h2=info,tower=info",
            )
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("DGA_WATCH_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start dga-operator");
        Operator { child, log }
    }

    fn kill9(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_env(prefix: &str, use_api_key: bool) -> Env {
    let cfg = StandinConfig {
        auth: Auth {
            basic: vec![("elastic".into(), PASSWORD.into())],
            api_keys: vec![api_key()],
            bearer: vec![],
        },
        ..StandinConfig::default()
    };
    let mut env = Env::start_tuned(prefix, cfg, Settings::default()).await;
    env.stop_controller();
    env.publish(TAG_A, Layout::V2);
    let mut b = BundleSpec::small(TAG_B, Layout::V2);
    b.model.seed += 1;
    env.publish_spec(b);
    let mut data = json!({"url": env.standin.es_url(), "kibana-url": env.standin.kibana_url()});
    if use_api_key {
        data["api-key"] = api_key().into();
    } else {
        data["username"] = "elastic".into();
        data["password"] = PASSWORD.into();
    }
    env.secret_with("es", data).await;
    env
}

async fn converged(sc: Scenario, env: &Env) -> bool {
    not_converged(sc, env).await.is_none()
}

/// Why the scenario has not converged yet (None once it has): what a failed run prints.
async fn not_converged(sc: Scenario, env: &Env) -> Option<String> {
    let m = match env.models_api().get_opt("dga").await {
        Ok(m) => m,
        Err(e) => return Some(format!("reading the DgaModel: {e}")),
    };
    if sc == Scenario::Delete {
        return m.map(|m| {
            format!(
                "DgaModel still there (finalizers {:?}, status {:?})",
                m.metadata.finalizers,
                m.status.map(|s| s.conditions)
            )
        });
    }
    let Some(m) = m else {
        return Some("no DgaModel".into());
    };
    let Some(st) = &m.status else {
        return Some("no status".into());
    };
    let want = if sc == Scenario::Upgrade {
        TAG_B
    } else {
        TAG_A
    };
    let stack = env.stack();
    let (pipelines, models, rules) = (
        stack.pipelines().await.len(),
        stack.models().await.len(),
        stack.rules("default").await.len(),
    );
    let ready = dga_operator::status::is_true(&st.conditions, "Ready");
    let done = ready
        && st.observed_generation == m.metadata.generation
        && st.installed_tag.as_deref() == Some(want)
        && pipelines == 3
        && models == 1
        && rules == 4;
    (!done).then(|| {
        let conditions: Vec<String> = st
            .conditions
            .iter()
            .map(|c| format!("{}={:?}/{}: {}", c.type_, c.status, c.reason, c.message))
            .collect();
        format!(
            "installed {:?} (want {want}), generation {:?}/{:?}, {pipelines} pipelines, {models} models, {rules} rules; {}",
            st.installed_tag,
            st.observed_generation,
            m.metadata.generation,
            conditions.join(" | ")
        )
    })
}

struct Row {
    scenario: Scenario,
    k: usize,
    release_first: bool,
    write: String,
    applied: String,
    converged: bool,
    secs: f64,
    violations: Vec<String>,
    leaks: Vec<String>,
}

/// Runs `sc`; when `k` is Some, blocks the k-th write (1-based), SIGKILLs the operator, releases
/// the request and starts a fresh operator. Returns the row and the writes seen.
async fn run(sc: Scenario, k: Option<usize>, release_first: bool) -> (Row, Vec<RequestRecord>) {
    let use_api_key = k.is_some_and(|k| k % 2 == 0);
    let env = start_env(&format!("crash-{sc:?}").to_lowercase(), use_api_key).await;
    let mut op = Operator::start(&env, "first");
    if sc != Scenario::Install {
        env.apply("dga", spec(TAG_A)).await;
        let ok = wait_for(Duration::from_secs(60), || async {
            converged(Scenario::Install, &env).await.then_some(())
        })
        .await;
        assert!(ok.is_some(), "setup install failed: {}", op.logs());
    }
    env.standin.clear_requests();

    // The interceptor: count writes, block the k-th until released.
    let writes = Arc::new(AtomicUsize::new(0));
    let blocked = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let blocked_write: Arc<Mutex<Option<String>>> = Arc::default();
    let blocked_seq: Arc<Mutex<Option<u64>>> = Arc::default();
    if let Some(k) = k {
        let (writes, blocked, release, bw, bs) = (
            writes.clone(),
            blocked.clone(),
            release.clone(),
            blocked_write.clone(),
            blocked_seq.clone(),
        );
        env.standin
            .set_interceptor(Some(Arc::new(move |r: RequestRecord| {
                let (writes, blocked, release, bw, bs) = (
                    writes.clone(),
                    blocked.clone(),
                    release.clone(),
                    bw.clone(),
                    bs.clone(),
                );
                Box::pin(async move {
                    if !r.is_write() {
                        return;
                    }
                    if writes.fetch_add(1, Ordering::SeqCst) + 1 == k {
                        *bw.lock().unwrap() = Some(request_key(&r));
                        *bs.lock().unwrap() = Some(r.seq);
                        blocked.notify_one();
                        let _ = release.acquire().await;
                    }
                })
            })));
    }
    let t0 = Instant::now();
    match sc {
        Scenario::Install => drop(env.apply("dga", spec(TAG_A)).await),
        Scenario::Upgrade => drop(env.apply("dga", spec(TAG_B)).await),
        Scenario::Delete => {
            env.models_api()
                .delete("dga", &DeleteParams::default())
                .await
                .unwrap();
        }
    }
    let mut logs = String::new();
    let mut second = None;
    if k.is_some() {
        let got = tokio::time::timeout(Duration::from_secs(30), blocked.notified()).await;
        assert!(
            got.is_ok(),
            "{sc:?} k={k:?}: write never reached: {}",
            op.logs()
        );
        env.standin.set_interceptor(None);
        if release_first {
            // The write is handled; the operator dies around the time its answer arrives.
            release.add_permits(1000);
            op.kill9();
        } else {
            op.kill9();
            release.add_permits(1000);
        }
        logs.push_str(&op.logs());
        second = Some(Operator::start(&env, "second"));
    }
    let ok = wait_for(Duration::from_secs(60), || async {
        converged(sc, &env).await.then_some(())
    })
    .await
    .is_some();
    let secs = t0.elapsed().as_secs_f64();
    let mut violations = if ok {
        let mut v = env.invariant_violations(sc == Scenario::Delete).await;
        let states = env.ml_states(PASSWORD).await;
        let want = if sc == Scenario::Delete {
            (None, None)
        } else {
            (Some("opened".to_string()), Some("started".to_string()))
        };
        if states != want {
            v.push(format!("job/datafeed {states:?}, want {want:?}"));
        }
        v
    } else {
        vec!["did not converge".into()]
    };
    let log = env.standin.requests();
    let blocked_seq = *blocked_seq.lock().unwrap();
    let applied = match blocked_seq {
        None => "-".to_string(),
        Some(seq) => match log.iter().find(|r| r.seq == seq) {
            Some(r) if r.status != 0 => format!("handled {}", r.status),
            _ => "dropped".to_string(),
        },
    };
    let mut texts = env.all_texts().await;
    if let Some(s) = &second {
        logs.push_str(&s.logs());
    } else {
        logs.push_str(&op.logs());
    }
    texts.push(logs.clone());
    // A log file (as `kubectl logs` shows it) is plain text: colours only on a terminal.
    if logs.contains('\u{1b}') {
        violations.push("ANSI escape codes in the operator's log file".into());
    }
    let leaks: Vec<String> = secrets()
        .into_iter()
        .filter(|s| texts.iter().any(|t| t.contains(s.as_str())))
        .collect();
    if !ok {
        let why = not_converged(sc, &env).await.unwrap_or_default();
        let notable: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains(" INFO "))
            .collect();
        eprintln!(
            "--- {sc:?} k={k:?} did not converge: {why}\nwarnings/errors/info of both operators:\n{}\nlast lines:\n{}",
            notable[notable.len().saturating_sub(80)..].join("\n"),
            tail(&logs, 40)
        );
    }
    drop(second);
    drop(op);
    let row = Row {
        scenario: sc,
        k: k.unwrap_or(0),
        release_first,
        applied,
        write: blocked_write
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| "-".into()),
        converged: ok,
        secs,
        violations,
        leaks,
    };
    env.drop_namespace().await;
    (row, log.into_iter().filter(|r| r.is_write()).collect())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_at_every_write_then_restart_converges() {
    let mut rows = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(3));
    // DGA_CRASH_ONLY="Upgrade:8" reruns one scenario's k-th write (both orders), for chasing a
    // failure the matrix found.
    let only: Option<(String, usize)> = std::env::var("DGA_CRASH_ONLY").ok().and_then(|v| {
        let (sc, k) = v.split_once(':')?;
        Some((sc.to_string(), k.parse().ok()?))
    });
    for sc in [Scenario::Install, Scenario::Upgrade, Scenario::Delete] {
        if only.as_ref().is_some_and(|(o, _)| *o != format!("{sc:?}")) {
            continue;
        }
        // Fault-free run: which writes the scenario makes.
        let (row, writes) = run(sc, None, false).await;
        assert!(row.converged, "{sc:?}: baseline did not converge");
        eprintln!(
            "{sc:?}: {} writes: {:?}",
            writes.len(),
            writes.iter().map(request_key).collect::<Vec<_>>()
        );
        rows.push(row);
        for k in 1..=writes.len() {
            if only.as_ref().is_some_and(|(_, o)| *o != k) {
                continue;
            }
            for release_first in [false, true] {
                let limit = limit.clone();
                tasks.spawn(async move {
                    let _p = limit.acquire_owned().await.unwrap();
                    run(sc, Some(k), release_first).await.0
                });
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        rows.push(r.expect("crash run panicked"));
    }
    rows.sort_by_key(|r| (format!("{:?}", r.scenario), r.k, r.release_first));
    let mut table = String::from(
        "| scenario | k | blocked write | order | blocked write's fate | converged | seconds | invariants | secrets in logs/status |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        table.push_str(&format!(
            "| {:?} | {} | {} | {} | {} | {} | {:.1} | {} | {} |\n",
            r.scenario,
            r.k,
            r.write,
            if r.k == 0 {
                "-"
            } else if r.release_first {
                "release, kill"
            } else {
                "kill, release"
            },
            r.applied,
            if r.converged { "yes" } else { "NO" },
            r.secs,
            if r.violations.is_empty() {
                "ok".into()
            } else {
                r.violations.join("; ")
            },
            if r.leaks.is_empty() {
                "none".into()
            } else {
                r.leaks.join(", ")
            },
        ));
    }
    eprintln!("\n{table}");
    let _ = std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/target"));
    let _ = std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/crash-matrix.md"),
        &table,
    );
    let bad: Vec<&Row> = rows
        .iter()
        .filter(|r| !r.converged || !r.violations.is_empty() || !r.leaks.is_empty())
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} crash runs failed:\n{table}",
        bad.len(),
        rows.len()
    );
}
