//! The one-shot CLI (`setup`, `plan`, `remove`) end to end: the real binary against the
//! stand-in Elasticsearch and GitHub releases API. No Kubernetes needed.
//!
//! Every run goes through `Bed::run`, which checks what any run must honour: the password never
//! appears in any output, errors are `dga-operator: ...` lines (plus `hint: ...`) with no panic
//! or Debug output, and the stand-in saw no off-spec request.

use std::path::PathBuf;

use dga_standin::bundle::{self as builder, BundleSpec, Defect, Layout, Release};
use dga_standin::{Auth, Service, Standin, StandinConfig};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_dga-operator");
const SECRET: &str = "s3cr3t-test";
/// An API key the stand-in accepts (base64 `id:key`); never printed either.
const API_KEY: &str = "ZGdhLWNsaTprM3ktczNjcjN0";
const REPO: &str = "elastic/detection-rules";
const CLI_OWNER: &str = "/dga-operator-cli";
const TAG: &str = "ML-DGA-20210126-1";

struct Bed {
    standin: Standin,
    dir: tempfile::TempDir,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Bed {
    async fn start() -> Bed {
        Self::start_with(StandinConfig::default()).await
    }

    /// The stand-in accepts `elastic` / `SECRET`, so every run can pass the secret with `-p`.
    async fn start_with(mut cfg: StandinConfig) -> Bed {
        cfg.auth = Auth {
            basic: vec![("elastic".into(), SECRET.into())],
            api_keys: vec![API_KEY.into()],
            ..Auth::default()
        };
        let standin = Standin::start(cfg).await.expect("stand-in starts");
        // DNS data the anomaly job's datafeed can read (Elasticsearch refuses to start a
        // datafeed whose indices match nothing).
        standin.put_index_settings("logs-network_traffic.dns-default", json!({}));
        Bed {
            standin,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn publish(&self, tag: &str, layout: Layout) -> Release {
        let spec = BundleSpec::small(tag, layout);
        let out = self.dir.path().join("releases").join(tag);
        let rel = builder::write_release(&spec, &out).unwrap();
        self.standin.publish_built(REPO, &rel).unwrap();
        rel
    }

    /// A v2 release with `defect`, published under `tag`.
    fn publish_bad(&self, tag: &str, defect: Defect) {
        let out = self.dir.path().join("bad").join(tag);
        let zip =
            builder::write_bad_release(&BundleSpec::small(tag, Layout::V2), defect, &out).unwrap();
        self.standin
            .publish_release_files(REPO, tag, vec![(format!("{tag}.zip"), zip)])
            .unwrap();
    }

    /// An unpacked release in `<tmp>/unpacked-<layout>/<tag>/`.
    fn unpacked(&self, tag: &str, layout: Layout) -> Release {
        let dir = self.dir.path().join(format!("unpacked-{layout:?}"));
        builder::write_unpacked(&BundleSpec::small(tag, layout), &dir).unwrap()
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// `-u`, `-p`, `--github-api`, `--cache-dir`, `--timeout` for the stand-in.
    fn conn(&self) -> Vec<String> {
        vec![
            "-u".into(),
            self.standin.es_url(),
            "-p".into(),
            SECRET.into(),
            "--timeout".into(),
            "20s".into(),
        ]
    }

    fn release_opts(&self) -> Vec<String> {
        vec![
            "--github-api".into(),
            self.standin.github_url(),
            "--cache-dir".into(),
            self.cache().display().to_string(),
        ]
    }

    /// `<cmd> -t TAG` (or other release args) with the stand-in's connection.
    async fn cmd(&self, cmd: &str, release: &[&str]) -> Run {
        let mut args: Vec<String> = vec![cmd.into()];
        args.extend(release.iter().map(|s| s.to_string()));
        if cmd != "remove" {
            args.extend(self.release_opts());
        }
        args.extend(self.conn());
        self.run(&args).await
    }

    async fn run<S: AsRef<str>>(&self, args: &[S]) -> Run {
        let out = tokio::process::Command::new(BIN)
            .args(args.iter().map(|a| a.as_ref()))
            .env_remove("DGA_ES_PASSWORD")
            .env_remove("DGA_ES_API_KEY")
            .env_remove("DGA_GITHUB_API")
            .env_remove("DGA_CACHE_DIR")
            .env_remove("GITHUB_TOKEN")
            .env("HOME", self.dir.path())
            .env("XDG_CACHE_HOME", self.dir.path().join("xdg"))
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("run dga-operator");
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        check_hygiene(&run);
        let off = self.standin.off_spec_requests();
        assert!(off.is_empty(), "off-spec requests: {off:?}\n{run}");
        run
    }

    fn es_writes(&self) -> Vec<String> {
        self.standin
            .requests()
            .iter()
            .filter(|r| r.service == Service::Es && r.is_write())
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    fn github_requests(&self) -> usize {
        self.standin
            .requests()
            .iter()
            .filter(|r| r.service == Service::GitHub)
            .count()
    }
}

/// What every run must honour, success or not.
fn check_hygiene(run: &Run) {
    for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        assert!(
            !text.contains(SECRET),
            "the password leaked on {name}\n{run}"
        );
        assert!(
            !text.contains("wr0ng-s3cr3t"),
            "a password leaked on {name}\n{run}"
        );
        assert!(!text.contains("panicked"), "panic on {name}\n{run}");
        assert!(!text.contains("RUST_BACKTRACE"), "panic on {name}\n{run}");
    }
    if run.code != 0 && run.code != 2 {
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert!(
            !lines.is_empty() && lines.len() <= 2,
            "one error line (+ hint)\n{run}"
        );
        assert!(lines[0].starts_with("dga-operator: "), "{run}");
        if let Some(h) = lines.get(1) {
            assert!(h.starts_with("hint: "), "{run}");
        }
        for debug_shape in ["Error {", "Some(", "kind:", "{ service"] {
            assert!(!run.stderr.contains(debug_shape), "Debug output\n{run}");
        }
    } else {
        assert!(run.stderr.is_empty(), "no stderr on success\n{run}");
    }
}

fn marker_owner(meta: Option<&Value>) -> Option<String> {
    meta?
        .get("dga_operator")?
        .get("owner")?
        .as_str()
        .map(str::to_string)
}

fn installed_model(bed: &Bed, rel: &Release) -> String {
    let models = bed.standin.models();
    let ids: Vec<&String> = models
        .keys()
        .filter(|id| id.starts_with(&format!("{}-", rel.model_id)))
        .collect();
    assert_eq!(ids.len(), 1, "one installed model: {:?}", models.keys());
    ids[0].clone()
}

/// The release is installed, every object carrying the CLI's marker.
fn assert_installed(bed: &Bed, rel: &Release) -> String {
    let model = installed_model(bed, rel);
    let models = bed.standin.models();
    assert_eq!(
        marker_owner(models[&model].get("metadata")).as_deref(),
        Some(CLI_OWNER)
    );
    let pipelines = bed.standin.pipelines();
    for id in &rel.pipeline_ids {
        assert_eq!(
            marker_owner(pipelines.get(id).and_then(|p| p.get("_meta"))).as_deref(),
            Some(CLI_OWNER),
            "{id}"
        );
    }
    assert!(
        pipelines[&rel.inference_pipeline]
            .to_string()
            .contains(&format!("\"model_id\":\"{model}\"")),
        "the inference pipeline uses the installed model"
    );
    let scripts = bed.standin.scripts();
    for id in &rel.script_ids {
        assert!(scripts[id].to_string().contains(CLI_OWNER), "{id} marked");
    }
    model
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn setup_from_release_tag_then_second_setup_writes_nothing() {
    let bed = Bed::start().await;
    let rel = bed.publish(TAG, Layout::V2);

    let run = bed.cmd("setup", &["-t", TAG]).await;
    assert_eq!(run.code, 0, "{run}");
    let model = assert_installed(&bed, &rel);
    assert!(
        run.stdout.contains(&format!("downloading release {TAG}")),
        "{run}"
    );
    assert!(
        run.stdout
            .contains(&format!("uploading trained model {model}")),
        "{run}"
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("uploading trained model") && l.ends_with("... done")),
        "{run}"
    );
    assert!(run.stdout.contains("installed release"), "{run}");
    assert!(run.stdout.contains(&rel.router_pipeline), "{run}");
    // Installed in order: model, scripts, inference pipeline, router.
    let writes = bed.es_writes();
    let pos = |needle: &str| {
        writes
            .iter()
            .position(|w| w.ends_with(needle))
            .unwrap_or_else(|| panic!("{needle} not in {writes:?}"))
    };
    assert!(
        pos(&format!("/_ml/trained_models/{model}"))
            < pos(&format!("/_scripts/{}", rel.script_ids[0]))
    );
    assert!(
        pos(&format!("/_scripts/{}", rel.script_ids[1]))
            < pos(&format!("/_ingest/pipeline/{}", rel.inference_pipeline))
    );
    assert!(
        pos(&format!("/_ingest/pipeline/{}", rel.inference_pipeline))
            < pos(&format!("/_ingest/pipeline/{}", rel.router_pipeline))
    );

    // Second run: nothing to do, no writes, the release comes from the cache.
    bed.standin.clear_requests();
    let again = bed.cmd("setup", &["-t", TAG]).await;
    assert_eq!(again.code, 0, "{again}");
    assert!(again.stdout.contains("nothing to do"), "{again}");
    assert!(
        bed.es_writes().is_empty(),
        "no writes: {:?}",
        bed.es_writes()
    );
    assert_eq!(bed.github_requests(), 0, "cached release");
    assert!(again.stdout.contains("using the cached copy"), "{again}");

    // The old command's long names work too.
    let old = bed.cmd("setup", &["--model-tag", TAG]).await;
    assert_eq!(old.code, 0, "{old}");
    assert!(bed.es_writes().is_empty());
}

#[tokio::test]
async fn setup_from_unpacked_folder_both_layouts() {
    for layout in [Layout::V1, Layout::V2] {
        let bed = Bed::start().await;
        let rel = bed.unpacked(TAG, layout);
        // The tag folder itself.
        let dir = rel.zip_path.display().to_string();
        let run = bed.cmd("setup", &["-d", &dir]).await;
        assert_eq!(run.code, 0, "{layout:?}: {run}");
        assert!(run.stdout.contains("reading release folder"), "{run}");
        assert!(
            run.stdout.contains(&format!(
                "layout {}",
                if layout == Layout::V1 { "v1" } else { "v2" }
            )),
            "{run}"
        );
        assert_installed(&bed, &rel);
        assert_eq!(bed.github_requests(), 0, "no download for -d");

        // The folder holding the tag folder is the same release: nothing to do.
        bed.standin.clear_requests();
        let parent = rel.zip_path.parent().unwrap().display().to_string();
        let again = bed.cmd("setup", &["--model-dir", &parent]).await;
        assert_eq!(again.code, 0, "{layout:?}: {again}");
        assert!(again.stdout.contains("nothing to do"), "{again}");
        assert!(bed.es_writes().is_empty(), "{:?}", bed.es_writes());
    }
}

/// `  create trained model X` -> `PUT /_ml/trained_models/X`.
fn expected_write(line: &str) -> String {
    let id = line.split_whitespace().last().unwrap();
    let method = if line.contains(": delete ") {
        "DELETE"
    } else {
        "PUT"
    };
    let path = if line.contains("trained model") {
        "/_ml/trained_models/"
    } else if line.contains("stored script") {
        "/_scripts/"
    } else if line.contains("ingest pipeline") {
        "/_ingest/pipeline/"
    } else {
        panic!("unexpected plan line {line}")
    };
    format!("{method} {path}{id}")
}

#[tokio::test]
async fn plan_lists_what_setup_then_does_and_writes_nothing() {
    let bed = Bed::start().await;
    let rel = bed.publish(TAG, Layout::V2);

    let plan = bed.cmd("plan", &["-t", TAG]).await;
    assert_eq!(plan.code, 2, "changes pending: {plan}");
    assert!(
        bed.es_writes().is_empty(),
        "plan wrote: {:?}",
        bed.es_writes()
    );
    assert!(bed.standin.models().is_empty() && bed.standin.pipelines().is_empty());
    let actions: Vec<&str> = plan
        .stdout
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(str::trim)
        .collect();
    assert_eq!(actions.len(), 5, "model, 2 scripts, 2 pipelines: {plan}");
    assert!(actions.iter().all(|a| a.starts_with("create ")), "{plan}");
    assert!(
        plan.stdout.contains("setup would make 5 change(s)"),
        "{plan}"
    );

    bed.standin.clear_requests();
    let setup = bed.cmd("setup", &["-t", TAG]).await;
    assert_eq!(setup.code, 0, "{setup}");
    let expected: Vec<String> = actions.iter().map(|a| expected_write(a)).collect();
    assert_eq!(bed.es_writes(), expected, "setup did what plan said");
    assert_installed(&bed, &rel);

    bed.standin.clear_requests();
    let after = bed.cmd("plan", &["-t", TAG]).await;
    assert_eq!(after.code, 0, "no changes: {after}");
    assert!(after.stdout.contains("no changes"), "{after}");
    assert!(bed.es_writes().is_empty());

    // Drift: a pipeline deleted by hand is planned for repair, and setup repairs exactly it.
    bed.standin.delete_pipeline(&rel.router_pipeline);
    let drift = bed.cmd("plan", &["-t", TAG]).await;
    assert_eq!(drift.code, 2, "{drift}");
    let lines: Vec<&str> = drift
        .stdout
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(str::trim)
        .collect();
    assert_eq!(
        lines,
        vec![format!("create ingest pipeline {}", rel.router_pipeline)],
        "{drift}"
    );
    bed.standin.clear_requests();
    let fix = bed.cmd("setup", &["-t", TAG]).await;
    assert_eq!(fix.code, 0, "{fix}");
    assert_eq!(bed.es_writes(), vec![expected_write(lines[0])]);
}

#[tokio::test]
async fn remove_takes_only_what_the_cli_installed() {
    let bed = Bed::start().await;
    let rel = bed.publish(TAG, Layout::V2);
    // Foreign objects: one with an unrelated id, one with a well-known id of the other layout
    // (as the old setup-dga-model left it: no marker), and a foreign script and model.
    let foreign_pipeline =
        json!({"description": "mine", "processors": [{"set": {"field": "a", "value": "b"}}]});
    bed.standin
        .put_pipeline("my_dns_pipeline", foreign_pipeline.clone());
    bed.standin
        .put_pipeline("dns_enrich_pipeline", foreign_pipeline.clone());
    bed.standin.put_script(
        "dga_ngrams_create",
        json!({"script": {"lang": "painless", "source": "return 1;"}}),
    );

    let run = bed.cmd("setup", &["-t", TAG]).await;
    assert_eq!(run.code, 0, "{run}");
    let model = assert_installed(&bed, &rel);

    bed.standin.clear_requests();
    let rm = bed.cmd("remove", &[]).await;
    assert_eq!(rm.code, 0, "{rm}");
    for id in &rel.pipeline_ids {
        assert!(
            rm.stdout.contains(&format!("removed ingest pipeline {id}")),
            "{rm}"
        );
    }
    for id in &rel.script_ids {
        assert!(
            rm.stdout.contains(&format!("removed stored script {id}")),
            "{rm}"
        );
    }
    assert!(
        rm.stdout
            .contains(&format!("removed trained model {model}")),
        "{rm}"
    );
    assert!(rm.stdout.contains("left in place"), "{rm}");
    assert!(rm.stdout.contains("dns_enrich_pipeline"), "{rm}");

    // Gone: everything the CLI installed. Kept: everything else.
    assert!(
        bed.standin.models().is_empty(),
        "{:?}",
        bed.standin.models()
    );
    let pipelines = bed.standin.pipelines();
    assert_eq!(
        pipelines.keys().cloned().collect::<Vec<_>>(),
        vec![
            "dns_enrich_pipeline".to_string(),
            "my_dns_pipeline".to_string()
        ]
    );
    assert_eq!(pipelines["dns_enrich_pipeline"], foreign_pipeline);
    assert_eq!(
        bed.standin.scripts().keys().cloned().collect::<Vec<_>>(),
        vec!["dga_ngrams_create".to_string()]
    );

    // Order: router pipeline, inference pipeline, scripts, then the model; deletes only.
    let writes = bed.es_writes();
    assert!(
        writes.iter().all(|w| w.starts_with("DELETE ")),
        "{writes:?}"
    );
    let pos = |needle: &str| {
        writes
            .iter()
            .position(|w| w.ends_with(needle))
            .unwrap_or_else(|| panic!("{needle} not in {writes:?}"))
    };
    assert!(pos(&rel.router_pipeline) < pos(&rel.inference_pipeline));
    assert!(pos(&rel.inference_pipeline) < pos(&rel.script_ids[0]));
    assert!(pos(&rel.script_ids[1]) < pos(&model));
    assert_eq!(writes.len(), 5, "{writes:?}");

    // Nothing left of ours: a second remove changes nothing.
    bed.standin.clear_requests();
    let again = bed.cmd("remove", &[]).await;
    assert_eq!(again.code, 0, "{again}");
    assert!(again.stdout.contains("nothing to remove"), "{again}");
    assert!(bed.es_writes().is_empty());
}

#[tokio::test]
async fn conflict_needs_overwrite_then_takes_over() {
    let bed = Bed::start().await;
    let rel = bed.publish(TAG, Layout::V2);
    let old = json!({"description": "left by setup-dga-model", "processors": [{"pipeline": {"name": "x"}}]});
    bed.standin.put_pipeline(&rel.router_pipeline, old.clone());

    let run = bed.cmd("setup", &["-t", TAG]).await;
    assert_eq!(run.code, 6, "{run}");
    assert!(
        run.stderr
            .contains(&format!("ingest pipeline {}", rel.router_pipeline)),
        "{run}"
    );
    assert!(run.stderr.contains("rerun with --overwrite"), "{run}");
    assert!(!run.stderr.contains("DgaModel"), "CLI wording: {run}");
    assert!(
        bed.es_writes().is_empty(),
        "nothing written: {:?}",
        bed.es_writes()
    );
    assert_eq!(bed.standin.pipelines()[&rel.router_pipeline], old);

    let plan = bed.cmd("plan", &["-t", TAG]).await;
    assert_eq!(plan.code, 6, "{plan}");
    assert!(bed.es_writes().is_empty());

    let plan = bed.cmd("plan", &["-t", TAG, "--overwrite"]).await;
    assert_eq!(plan.code, 2, "{plan}");
    assert!(
        plan.stdout
            .contains(&format!("adopt ingest pipeline {}", rel.router_pipeline)),
        "{plan}"
    );

    let run = bed.cmd("setup", &["-t", TAG, "--overwrite"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_installed(&bed, &rel);
}

#[tokio::test]
async fn bad_input_is_refused_before_any_request() {
    let bed = Bed::start().await;
    bed.publish(TAG, Layout::V2);
    let unpacked = bed.unpacked(TAG, Layout::V1);
    let dir = unpacked.zip_path.display().to_string();
    let bad_ca = bed.dir.path().join("not-a-ca.pem");
    std::fs::write(&bad_ca, "hello").unwrap();
    let bad_ca = bad_ca.display().to_string();
    let es = bed.standin.es_url();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["setup", "-t", "v1.0.0"], "not a release tag"),
        (vec!["setup", "-t", "ML-DGA-2021-1"], "ML-DGA-YYYYMMDD-N"),
        (
            vec!["plan", "-t", "ML-DGA-20210126-1x"],
            "not a release tag",
        ),
        (vec!["setup"], "no release given"),
        (vec!["setup", "-t", TAG, "-d", &dir], "not both"),
        (vec!["setup", "-d", "/nonexistent/dga"], "No such file"),
        (vec!["setup", "-d", &dir, "--sha256", "ab"], "go with -t"),
        (
            vec!["setup", "-t", TAG, "--sha256", "xyz"],
            "64 hexadecimal",
        ),
        (
            vec!["setup", "-t", TAG, "--repository", "nope"],
            "OWNER/NAME",
        ),
        (
            vec!["setup", "-t", TAG, "--cloud-id", "no-colon-here"],
            "--cloud-id is malformed",
        ),
        (
            vec!["setup", "-t", TAG, "--cloud-id", "name:%%%"],
            "--cloud-id is malformed",
        ),
        (
            vec!["remove", "--cloud-id", "x:aG9zdA=="],
            "--cloud-id is malformed",
        ),
        (
            vec!["remove", "--cloud-id", "x:aG9zdA==", "-u", &es],
            "not both",
        ),
        (vec!["remove"], "no Elasticsearch given"),
        (vec!["remove", "-u", "ftp://es"], "http or https"),
        (
            vec!["remove", "-u", &es, "--ca-cert", &bad_ca],
            "no PEM certificate",
        ),
        (
            vec!["remove", "-u", &es, "--ca-cert", "/nonexistent.pem"],
            "--ca-cert",
        ),
        (vec!["remove", "-u", &es, "--timeout", "soon"], "--timeout"),
        (vec!["remove", "-u", &es, "--api-key", "a2V5"], "not both"),
        (vec!["setup", "--bogus"], "unexpected argument"),
        (
            vec!["remove", "-u", &es, "--kibana-url", "nope"],
            "--kibana-url",
        ),
    ];
    for (args, needle) in cases {
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        if !full.iter().any(|a| a == "-u" || a == "--cloud-id") && full[0] != "remove" {
            full.extend(["-u".to_string(), es.clone()]);
        }
        full.extend(["-p".into(), SECRET.into()]);
        full.extend(bed.release_opts_for(&full[0]));
        let run = bed.run(&full).await;
        assert_eq!(run.code, 3, "{full:?}: {run}");
        assert!(
            run.stderr.contains(needle),
            "{full:?}: expected {needle:?}\n{run}"
        );
    }
    assert!(
        bed.standin.requests().is_empty(),
        "bad input sends nothing: {:?}",
        bed.standin.requests()
    );
}

impl Bed {
    fn release_opts_for(&self, cmd: &str) -> Vec<String> {
        if cmd == "remove" {
            vec![]
        } else {
            self.release_opts()
        }
    }
}

#[tokio::test]
async fn connection_and_credential_errors() {
    let bed = Bed::start().await;
    bed.publish(TAG, Layout::V2);

    // Unreachable host.
    let url = format!("http://127.0.0.1:{}", closed_port());
    let mut args = vec![
        "setup".to_string(),
        "-t".into(),
        TAG.into(),
        "-u".into(),
        url,
        "-p".into(),
        SECRET.into(),
    ];
    args.extend(bed.release_opts());
    let run = bed.run(&args).await;
    assert_eq!(run.code, 4, "{run}");
    assert!(run.stderr.contains("Elasticsearch unreachable"), "{run}");
    assert!(
        run.stderr.contains("hint: check -u/--elasticsearch-url"),
        "{run}"
    );

    // A well-formed cloud id is decoded and used (https, uuid.host:port).
    use base64::Engine as _;
    let port = closed_port();
    let cloud = format!(
        "dep:{}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("localhost:{port}$esuuid1$kbuuid1"))
    );
    let run = bed
        .run(&[
            "remove",
            "--cloud-id",
            &cloud,
            "-p",
            SECRET,
            "--timeout",
            "10s",
        ])
        .await;
    assert_eq!(run.code, 4, "{run}");
    assert!(
        run.stderr
            .contains(&format!("https://esuuid1.localhost:{port}")),
        "{run}"
    );

    // Wrong password: 401, no secret printed (checked by `run`).
    for cmd in ["setup", "remove", "plan"] {
        let mut args = vec![cmd.to_string()];
        if cmd != "remove" {
            args.extend(["-t".to_string(), TAG.into()]);
            args.extend(bed.release_opts());
        }
        args.extend([
            "-u".to_string(),
            bed.standin.es_url(),
            "-p".into(),
            "wr0ng-s3cr3t".into(),
        ]);
        let run = bed.run(&args).await;
        assert_eq!(run.code, 4, "{cmd}: {run}");
        assert!(
            run.stderr.contains("rejected the credentials (401)"),
            "{run}"
        );
        assert!(run.stderr.contains("hint: check --user"), "{run}");
    }
    // The refused runs may have dropped a download half-way: nothing partial is left behind.
    let partial: Vec<_> = std::fs::read_dir(bed.cache().join("zips"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".download-"))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");

    // No credentials at all and no terminal: tried anonymously, 401 explained.
    let run = bed.run(&["remove", "-u", &bed.standin.es_url()]).await;
    assert_eq!(run.code, 4, "{run}");
    assert!(run.stderr.contains("no credentials were given"), "{run}");

    // The password from the environment works and is not shown either.
    let out = tokio::process::Command::new(BIN)
        .args(["remove", "-u", &bed.standin.es_url()])
        .env("DGA_ES_PASSWORD", SECRET)
        .env("HOME", bed.dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let run = Run {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    check_hygiene(&run);
    assert_eq!(run.code, 0, "{run}");
    // An API key instead of a password.
    let run = bed
        .run(&["remove", "-u", &bed.standin.es_url(), "--api-key", API_KEY])
        .await;
    assert_eq!(run.code, 0, "{run}");
    let principals: Vec<_> = bed
        .standin
        .requests()
        .into_iter()
        .filter_map(|r| r.principal)
        .collect();
    assert!(
        principals.iter().any(|p| p.starts_with("api_key:")),
        "{principals:?}"
    );
    // Nor does --help show the environment's value.
    let help = tokio::process::Command::new(BIN)
        .args(["setup", "--help"])
        .env("DGA_ES_PASSWORD", SECRET)
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(!help.contains(SECRET), "{help}");
    assert!(bed.es_writes().is_empty());
    assert!(bed.standin.off_spec_requests().is_empty());
}

#[tokio::test]
async fn licence_must_include_machine_learning() {
    let bed = Bed::start().await;
    bed.publish(TAG, Layout::V2);
    bed.standin.set_license("basic");
    for cmd in ["setup", "plan"] {
        let run = bed.cmd(cmd, &["-t", TAG]).await;
        assert_eq!(run.code, 5, "{run}");
        assert!(run.stderr.contains("licence `basic`"), "{run}");
        assert!(run.stderr.contains("hint: "), "{run}");
    }
    assert!(bed.es_writes().is_empty());
    // A trial is enough (the old CLI refused it).
    bed.standin.set_license("trial");
    let run = bed.cmd("setup", &["-t", TAG]).await;
    assert_eq!(run.code, 0, "{run}");
}

#[tokio::test]
async fn release_and_bundle_problems() {
    let bed = Bed::start().await;
    let rel = bed.publish(TAG, Layout::V2);

    // Unknown release.
    let run = bed.cmd("setup", &["-t", "ML-DGA-20990101-1"]).await;
    assert_eq!(run.code, 7, "{run}");
    assert!(
        run.stderr.contains("release ML-DGA-20990101-1 not found"),
        "{run}"
    );

    // Pinned sha256 that does not match the download.
    let wrong = "0".repeat(64);
    let run = bed.cmd("setup", &["-t", TAG, "--sha256", &wrong]).await;
    assert_eq!(run.code, 7, "{run}");
    assert!(run.stderr.contains("checksum mismatch"), "{run}");
    assert!(run.stderr.contains("--sha256"), "{run}");
    assert!(!run.stderr.contains("spec."), "CLI wording: {run}");

    // The right pin is accepted.
    let run = bed
        .cmd("plan", &["-t", TAG, "--sha256", &rel.zip_sha256])
        .await;
    assert_eq!(run.code, 2, "{run}");

    // A mirror URL with its pin.
    let mirror_tag = "ML-DGA-20210127-1";
    let mirror = bed.publish(mirror_tag, Layout::V1);
    // The stand-in serves assets under its own URLs: look the zip's up.
    let api = format!(
        "{}/repos/{REPO}/releases/tags/{mirror_tag}",
        bed.standin.github_url()
    );
    let release: Value = reqwest::get(&api).await.unwrap().json().await.unwrap();
    let zip_url = release["assets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"].as_str().unwrap().ends_with(".zip"))
        .unwrap()["browser_download_url"]
        .as_str()
        .unwrap()
        .to_string();
    let run = bed
        .cmd(
            "plan",
            &[
                "-t",
                mirror_tag,
                "--url",
                &zip_url,
                "--sha256",
                &mirror.zip_sha256,
            ],
        )
        .await;
    assert_eq!(run.code, 2, "{run}");

    // A published release whose zip is not a valid bundle.
    let bad_tag = "ML-DGA-20210128-1";
    bed.publish_bad(bad_tag, Defect::MissingPipeline);
    let run = bed.cmd("setup", &["-t", bad_tag]).await;
    assert_eq!(run.code, 7, "{run}");
    assert!(run.stderr.contains("invalid bundle"), "{run}");

    // An unpacked folder missing a pipeline.
    let unpacked = bed.unpacked("ML-DGA-20210129-1", Layout::V2);
    std::fs::remove_file(unpacked.zip_path.join("ml_dga_inference_pipeline.json")).unwrap();
    let run = bed
        .cmd("setup", &["-d", &unpacked.zip_path.display().to_string()])
        .await;
    assert_eq!(run.code, 7, "{run}");
    assert!(run.stderr.contains("invalid bundle"), "{run}");

    assert!(bed.es_writes().is_empty(), "{:?}", bed.es_writes());
}

/// The definition is not parsed before the upload (Elasticsearch parses it, and the parse was
/// most of an install's time). When Elasticsearch refuses it, the error names the release file
/// and the problem, nothing else is written, and the next run refuses the release without
/// uploading it again. Also for a definition that is not JSON at all (balanced brackets, a bad
/// value inside; issue 15, finding 9), which used to exit 1 without naming the file.
#[tokio::test]
async fn a_definition_elasticsearch_refuses_is_named_and_not_sent_again() {
    let bed = Bed::start().await;
    for (tag, defect, problem) in [
        (
            "ML-DGA-20210130-1",
            Defect::UndecodableDefinition,
            "does not decode",
        ),
        (
            "ML-DGA-20210201-1",
            Defect::InvalidJsonDefinition,
            "`definition` is not valid JSON",
        ),
    ] {
        bed.publish_bad(tag, defect);
        bed.standin.clear_requests();
        let model_puts = || {
            bed.standin
                .requests()
                .iter()
                .filter(|r| r.method == "PUT" && r.path.starts_with("/_ml/trained_models/"))
                .map(|r| r.status)
                .collect::<Vec<u16>>()
        };
        let run = bed.cmd("setup", &["-t", tag]).await;
        assert_eq!(run.code, 7, "{run}");
        assert!(run.stderr.contains("invalid bundle"), "{run}");
        assert!(run.stderr.contains("_model.json"), "names the file: {run}");
        assert!(run.stderr.contains(problem), "{run}");
        assert_eq!(model_puts(), vec![400], "one upload, refused");
        assert!(bed.es_writes().len() == 1, "{:?}", bed.es_writes());
        assert!(bed.standin.models().is_empty());

        let run = bed.cmd("setup", &["-t", tag]).await;
        assert_eq!(run.code, 7, "{run}");
        assert!(run.stderr.contains(problem), "{run}");
        assert_eq!(model_puts(), vec![400], "not uploaded again");
        assert!(bed.standin.scripts().is_empty() && bed.standin.pipelines().is_empty());
    }
}

#[tokio::test]
async fn help_documents_exit_codes() {
    let bed = Bed::start().await;
    for cmd in ["setup", "plan", "remove"] {
        let run = bed.run(&[cmd, "--help"]).await;
        assert_eq!(run.code, 0, "{run}");
        for needle in [
            "Exit codes:",
            "2  plan: changes pending",
            "3  usage",
            "4  cannot connect",
            "5  licence",
            "6  conflict",
            "7  release or bundle",
            "8  temporarily unavailable",
            "130  interrupted",
            "--retries",
            "--cloud-id",
            "--es-password",
        ] {
            assert!(run.stdout.contains(needle), "{cmd}: {needle}\n{run}");
        }
    }
    let run = bed.run(&["setup", "--help"]).await;
    for needle in [
        "-t, --model-tag",
        "-d, --model-dir",
        "--overwrite",
        "-u, --elasticsearch-url",
        "--sha256",
        "--cache-dir",
    ] {
        assert!(run.stdout.contains(needle), "{needle}\n{run}");
    }
}

#[tokio::test]
async fn setup_of_a_new_release_upgrades_and_cleans_the_old_one() {
    let bed = Bed::start().await;
    let v1 = bed.publish("ML-DGA-20201129-25", Layout::V1);
    let v2 = bed.publish(TAG, Layout::V2);
    let run = bed.cmd("setup", &["-t", &v1.tag]).await;
    assert_eq!(run.code, 0, "{run}");
    let old_model = assert_installed(&bed, &v1);

    let plan = bed.cmd("plan", &["-t", &v2.tag]).await;
    assert_eq!(plan.code, 2, "{plan}");
    for id in v1.pipeline_ids.iter().chain(&v1.script_ids) {
        assert!(
            plan.stdout
                .lines()
                .any(|l| l.contains("remove stale: delete") && l.ends_with(&format!(" {id}"))),
            "{id}: {plan}"
        );
    }
    // No uninstall step needed: setup switches to the new release, then removes the old one.
    bed.standin.clear_requests();
    let run = bed.cmd("setup", &["-t", &v2.tag]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_installed(&bed, &v2);
    let models = bed.standin.models();
    assert!(!models.contains_key(&old_model), "{:?}", models.keys());
    let pipelines = bed.standin.pipelines();
    let scripts = bed.standin.scripts();
    for id in &v1.pipeline_ids {
        assert!(!pipelines.contains_key(id), "{id}");
    }
    for id in &v1.script_ids {
        assert!(!scripts.contains_key(id), "{id}");
    }
    let writes = bed.es_writes();
    let first_delete = writes.iter().position(|w| w.starts_with("DELETE")).unwrap();
    assert!(
        writes[..first_delete]
            .iter()
            .any(|w| w.ends_with(&v2.router_pipeline)),
        "new router before any delete: {writes:?}"
    );
}

/// With a Kibana URL, setup also installs the detection rules and the anomaly job of the
/// machine_learning rule, once; plan and a second setup see nothing to do; remove takes them.
#[tokio::test]
async fn kibana_url_installs_the_rules_once_and_remove_takes_them() {
    let bed = Bed::start().await;
    let rel = bed.publish(TAG, Layout::V2);
    let kb = bed.standin.kibana_url();
    let with_kibana = |cmd: &str, extra: &[&str]| {
        let mut args: Vec<String> = vec![cmd.into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        if cmd != "remove" {
            args.extend(bed.release_opts());
        }
        args.extend(bed.conn());
        args.extend(["--kibana-url".to_string(), kb.clone()]);
        args
    };
    let kibana_writes = || {
        bed.standin
            .requests()
            .iter()
            .filter(|r| r.service == Service::Kibana && r.is_write())
            .count()
    };

    // Issue 14: one plan, from one engine, lists both services' objects: the model, scripts
    // and pipelines, the Kibana rules, the anomaly job and its datafeed; nothing is written.
    let plan = bed.run(&with_kibana("plan", &["-t", TAG])).await;
    assert_eq!(plan.code, 2, "{plan}");
    let steps: Vec<&str> = plan
        .stdout
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(str::trim)
        .collect();
    let job = "dga_high_sum_probability";
    for want in [
        "create trained model ".to_string(),
        "create ingest pipeline ".to_string(),
        "create rule ".to_string(),
        format!("create anomaly detection job {job}"),
        format!("create datafeed datafeed-{job}"),
        format!("open job {job}"),
        format!("start datafeed datafeed-{job}"),
    ] {
        assert!(steps.iter().any(|s| s.starts_with(&want)), "{want}: {plan}");
    }
    assert_eq!(
        steps
            .iter()
            .filter(|s| s.starts_with("create rule "))
            .count(),
        4,
        "{plan}"
    );
    assert!(
        plan.stdout
            .contains(&format!("setup would make {} change(s)", steps.len())),
        "{plan}"
    );
    assert!(bed.es_writes().is_empty(), "{:?}", bed.es_writes());
    assert_eq!(kibana_writes(), 0);

    let run = bed.run(&with_kibana("setup", &["-t", TAG])).await;
    assert_eq!(run.code, 0, "{run}");
    assert_installed(&bed, &rel);
    let rules = bed.standin.rules("default");
    assert_eq!(rules.len(), 4, "{rules:?}");
    let owner_tag = format!("dga-operator:owner:{CLI_OWNER}");
    for r in &rules {
        assert!(
            r["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == &json!(owner_tag)),
            "{r}"
        );
        assert!(
            run.stdout
                .contains(&format!("create rule {}", r["rule_id"].as_str().unwrap())),
            "{run}"
        );
    }
    assert!(
        bed.standin.jobs().contains_key("dga_high_sum_probability"),
        "{run}"
    );
    assert!(
        bed.standin.requests().iter().any(|r| r.method == "POST"
            && r.path == "/_ml/datafeeds/datafeed-dga_high_sum_probability/_start"
            && r.status == 200),
        "datafeed started: {run}"
    );

    // Nothing left to do: neither setup nor plan writes or proposes anything.
    bed.standin.clear_requests();
    let again = bed.run(&with_kibana("setup", &["-t", TAG])).await;
    assert_eq!(again.code, 0, "{again}");
    assert!(again.stdout.contains("nothing to do"), "{again}");
    let plan = bed.run(&with_kibana("plan", &["-t", TAG])).await;
    assert_eq!(plan.code, 0, "{plan}");
    assert!(plan.stdout.contains("no changes"), "{plan}");
    assert!(bed.es_writes().is_empty(), "{:?}", bed.es_writes());
    assert_eq!(kibana_writes(), 0);

    // A rule deleted in Kibana: plan names it, setup puts it back.
    let gone = rules[0]["rule_id"].as_str().unwrap().to_string();
    bed.standin.delete_rule("default", &gone);
    let plan = bed.run(&with_kibana("plan", &["-t", TAG])).await;
    assert_eq!(plan.code, 2, "{plan}");
    assert!(
        plan.stdout.contains(&format!("create rule {gone}")),
        "{plan}"
    );
    let run = bed.run(&with_kibana("setup", &["-t", TAG])).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(bed.standin.rules("default").len(), 4);

    let rm = bed.run(&with_kibana("remove", &[])).await;
    assert_eq!(rm.code, 0, "{rm}");
    assert!(rm.stdout.contains("removed detection rule"), "{rm}");
    assert!(bed.standin.rules("default").is_empty(), "{rm}");
    assert!(bed.standin.jobs().is_empty(), "{rm}");
    assert!(bed.standin.models().is_empty(), "{rm}");
}

/// Issue 14: where Kibana offers Elastic's prebuilt DGA rules, setup installs and enables those
/// (no custom copy under any id), a second setup has nothing to do, and remove leaves them (the
/// CLI keeps no record that could tell its installs from a person's).
#[tokio::test]
async fn kibana_offering_elastics_rules_gets_them_from_setup_and_remove_leaves_them() {
    let bed = Bed::start_with(StandinConfig {
        kibana_prebuilt_dga: true,
        ..StandinConfig::default()
    })
    .await;
    bed.publish(TAG, Layout::V2);
    let kb = bed.standin.kibana_url();
    let with_kibana = |cmd: &str, extra: &[&str]| {
        let mut args: Vec<String> = vec![cmd.into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        if cmd != "remove" {
            args.extend(bed.release_opts());
        }
        args.extend(bed.conn());
        args.extend(["--kibana-url".to_string(), kb.clone()]);
        args
    };
    let facts: Value =
        serde_json::from_str(include_str!("standin/fixtures/elastic-dga-content.json")).unwrap();
    let ids: Vec<String> = facts["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap().to_string())
        .collect();
    let run = bed.run(&with_kibana("setup", &["-t", TAG])).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("prebuilt-rules API"), "{run}");
    let rules = bed.standin.rules("default");
    assert_eq!(rules.len(), 4, "{rules:?}");
    for id in &ids {
        let r = rules.iter().find(|r| r["rule_id"] == json!(id)).expect(id);
        assert_eq!(
            (r["immutable"].clone(), r["enabled"].clone()),
            (json!(true), json!(true)),
            "{id}"
        );
        assert!(
            run.stdout
                .contains(&format!("install Elastic's prebuilt rule {id}")),
            "{run}"
        );
    }
    let again = bed.run(&with_kibana("setup", &["-t", TAG])).await;
    assert_eq!(again.code, 0, "{again}");
    assert!(again.stdout.contains("nothing to do"), "{again}");
    let rm = bed.run(&with_kibana("remove", &[])).await;
    assert_eq!(rm.code, 0, "{rm}");
    assert_eq!(bed.standin.rules("default").len(), 4, "{rm}");
    assert!(rm.stdout.contains("never removed by the CLI"), "{rm}");
}

// ---------------------------------------------------------------------------------------------
// Issue 15, findings 7-9: a flaky network, a bad download, and the smaller edges.

use dga_standin::{Fault, FaultAction};

/// Every file under `dir`, with its size (relative paths).
fn files_under(dir: &std::path::Path) -> Vec<(String, u64)> {
    fn walk(root: &std::path::Path, d: &std::path::Path, out: &mut Vec<(String, u64)>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = p.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                out.push((format!("{name}/"), 0));
                walk(root, &p, out);
            } else {
                out.push((name, meta.len()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// Scratch files of a download or an opening that must not outlive it.
fn partials(dir: &std::path::Path) -> Vec<String> {
    files_under(dir)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.contains(".download-") || n.contains(".prefetch-"))
        .collect()
}

fn fault(service: Service, method: &str, path: &str, times: u32, action: FaultAction) -> Fault {
    Fault {
        service: Some(service),
        method: Some(method.into()),
        times,
        ..Fault::new(path, action)
    }
}

fn status(code: u16, retry_after: Option<u32>) -> FaultAction {
    FaultAction::Status {
        code,
        retry_after,
        body: None,
    }
}

/// The zip download of a release in the stand-in (`/download/{repo}/{tag}/{tag}.zip`).
const ZIP_DOWNLOAD: &str = r"^/download/.*\.zip$";

/// Finding 7: a release host that once served something other than the release (an HTML page,
/// a cut file, with status 200) does not poison the cache: the next run asks again. A cached
/// zip damaged on disk is dropped and downloaded again.
#[tokio::test]
async fn a_bad_download_is_not_cached_and_the_next_run_asks_again() {
    let bed = Bed::start().await;
    let good = bed.publish(TAG, Layout::V2);
    let whole = std::fs::read(&good.zip_path).unwrap();
    let name = format!("{TAG}.zip");
    for (what, bytes) in [
        (
            "an HTML page",
            b"<html><body>rate limited</body></html>".to_vec(),
        ),
        ("a cut zip", whole[..whole.len() / 2].to_vec()),
    ] {
        bed.standin
            .publish_release(REPO, TAG, vec![(name.clone(), bytes)]);
        let run = bed.cmd("setup", &["-t", TAG]).await;
        assert_eq!(run.code, 7, "{what}: {run}");
        assert!(run.stderr.contains("is not a zip file"), "{what}: {run}");
        assert!(run.stderr.contains("/download/"), "names the URL: {run}");
        assert!(bed.es_writes().is_empty(), "{what}: {:?}", bed.es_writes());
        let kept: Vec<_> = files_under(&bed.cache())
            .into_iter()
            .filter(|(n, _)| n.ends_with(".zip"))
            .collect();
        assert!(kept.is_empty(), "{what}: nothing cached: {kept:?}");
        assert!(partials(&bed.cache()).is_empty());
    }
    // The host serves the release again: the next run downloads it and installs.
    bed.standin.publish_built(REPO, &good).unwrap();
    let run = bed.cmd("setup", &["-t", TAG]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_installed(&bed, &good);

    // The cached zip damaged on disk (and its opened folder gone): dropped, downloaded again.
    let zip = bed
        .cache()
        .join("zips")
        .join(format!("{}.zip", good.zip_sha256));
    assert!(zip.is_file(), "{:?}", files_under(&bed.cache()));
    std::fs::write(&zip, &whole[..1000]).unwrap();
    std::fs::remove_dir_all(bed.cache().join("bundles").join(&good.zip_sha256)).unwrap();
    bed.standin.clear_requests();
    let run = bed.cmd("setup", &["-t", TAG]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("nothing to do"), "{run}");
    assert!(bed.github_requests() > 0, "downloaded again");
    assert_eq!(std::fs::read(&zip).unwrap(), whole);
}

/// Finding 7: a zip whose model inflates past the limit is refused before anything is
/// extracted (no large file is written, nothing is left), and the next run refuses it from the
/// cache without downloading or extracting again.
#[tokio::test]
async fn a_zip_bomb_is_refused_without_writing_and_refused_again_from_the_cache() {
    let bed = Bed::start().await;
    let tag = "ML-DGA-20210131-1";
    let limit = 512u64 << 20;
    bed.publish_bad(tag, Defect::ZipBomb { bytes: limit + 1 });
    let zip_len = std::fs::metadata(
        bed.dir
            .path()
            .join("bad")
            .join(tag)
            .join(format!("{tag}.zip")),
    )
    .unwrap()
    .len();
    assert!(zip_len < 4 << 20, "a small zip: {zip_len}");
    for round in 0..2 {
        bed.standin.clear_requests();
        let run = bed.cmd("setup", &["-t", tag]).await;
        assert_eq!(run.code, 7, "{run}");
        assert!(
            run.stderr
                .contains(&format!("more than the limit of {limit}")),
            "names the limit: {run}"
        );
        let written: u64 = files_under(&bed.cache())
            .iter()
            .filter(|(n, _)| !n.ends_with(".zip"))
            .map(|(_, s)| s)
            .sum();
        assert!(
            written < 1 << 20,
            "round {round}: {:?}",
            files_under(&bed.cache())
        );
        assert!(partials(&bed.cache()).is_empty());
        if round == 1 {
            assert_eq!(bed.github_requests(), 0, "refused from the cache: {run}");
        }
    }
    assert!(bed.es_writes().is_empty());
}

/// Finding 7: a model entry that inflates past the size its zip entry declares is stopped at
/// that size (not at the 512 MiB limit): nothing large is written, nothing is left.
#[tokio::test]
async fn a_zip_entry_that_lies_about_its_size_is_stopped_at_the_declared_size() {
    let bed = Bed::start().await;
    let tag = "ML-DGA-20210203-1";
    bed.publish_bad(tag, Defect::LyingZipBomb { bytes: 600 << 20 });
    let run = bed.cmd("setup", &["-t", tag]).await;
    assert_eq!(run.code, 7, "{run}");
    assert!(
        run.stderr
            .contains("inflates to more than the 1000 bytes its zip entry declares"),
        "{run}"
    );
    let written: u64 = files_under(&bed.cache())
        .iter()
        .filter(|(n, _)| !n.ends_with(".zip"))
        .map(|(_, s)| s)
        .sum();
    assert!(written < 1 << 20, "{:?}", files_under(&bed.cache()));
    assert!(partials(&bed.cache()).is_empty());
    assert!(bed.es_writes().is_empty());
}

/// Finding 7: Ctrl-C while the release downloads ends the run with 130 and leaves no partial
/// file in the cache.
#[tokio::test]
async fn ctrl_c_during_a_download_leaves_no_partial_file() {
    let bed = Bed::start().await;
    bed.publish(TAG, Layout::V2);
    // The host sends half the zip, then nothing more, keeping the connection open.
    bed.standin.add_fault(fault(
        Service::GitHub,
        "GET",
        ZIP_DOWNLOAD,
        1,
        FaultAction::StallBody,
    ));
    let mut args: Vec<String> = vec!["setup".into(), "-t".into(), TAG.into()];
    args.extend(bed.release_opts());
    args.extend(bed.conn());
    let child = tokio::process::Command::new(BIN)
        .args(&args)
        .env("HOME", bed.dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    // Waits for the download to be under way: its partial file exists.
    let zips = bed.cache().join("zips");
    let started = support_wait(|| {
        std::fs::read_dir(&zips)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".download-"))
    })
    .await;
    assert!(
        started,
        "no download began: {:?}",
        files_under(&bed.cache())
    );
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().await.unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    check_hygiene(&run);
    assert_eq!(run.code, 130, "{run}");
    assert!(run.stderr.contains("interrupted"), "{run}");
    assert!(
        partials(&bed.cache()).is_empty(),
        "{:?}",
        files_under(&bed.cache())
    );
    assert!(bed.es_writes().is_empty(), "{:?}", bed.es_writes());
}

/// Polls `f` (a file appearing) for up to a minute.
async fn support_wait(f: impl Fn() -> bool) -> bool {
    for _ in 0..600 {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// Finding 8: one 503, one 429 (both with Retry-After), a dropped connection from
/// Elasticsearch and a 502 from the release host are retried; setup finishes.
#[tokio::test]
async fn transient_errors_are_retried_and_setup_finishes() {
    let bed = Bed::start().await;
    let rel = bed.publish(TAG, Layout::V2);
    let s = &bed.standin;
    s.add_fault(fault(
        Service::GitHub,
        "GET",
        r"^/repos/.*/releases/tags/",
        1,
        status(502, None),
    ));
    s.add_fault(fault(
        Service::Es,
        "PUT",
        r"^/_scripts/",
        1,
        status(503, Some(1)),
    ));
    s.add_fault(fault(
        Service::Es,
        "PUT",
        r"^/_ingest/pipeline/",
        1,
        status(429, Some(1)),
    ));
    s.add_fault(fault(
        Service::Es,
        "GET",
        r"^/_license$",
        1,
        FaultAction::Close,
    ));
    let run = bed.cmd("setup", &["-t", TAG]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_installed(&bed, &rel);
    let retries: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.contains("; retrying in "))
        .collect();
    assert_eq!(retries.len(), 4, "{run}");
    for needle in ["HTTP 502", "HTTP 503", "HTTP 429"] {
        assert!(
            retries.iter().any(|l| l.contains(needle)),
            "{needle}: {run}"
        );
    }
    let faulted: Vec<_> = s
        .requests()
        .into_iter()
        .filter(|r| r.fault.is_some())
        .collect();
    assert_eq!(faulted.len(), 4, "{faulted:?}");
}

/// Finding 8: a service that stays busy exits 8 (not 4), says what answered, and when setup
/// had begun to write says to run it again, which then finishes without redoing the upload.
#[tokio::test]
async fn a_service_that_stays_busy_exits_8_and_the_rerun_finishes() {
    let bed = Bed::start().await;
    let rel = bed.publish(TAG, Layout::V2);
    bed.standin.add_fault(fault(
        Service::Es,
        "PUT",
        r"^/_scripts/",
        100,
        status(503, Some(1)),
    ));
    let run = bed.cmd("setup", &["-t", TAG, "--retries", "1"]).await;
    assert_eq!(run.code, 8, "{run}");
    assert!(run.stderr.contains("HTTP 503"), "{run}");
    assert!(run.stderr.contains("/_scripts/"), "names the URL: {run}");
    assert!(
        run.stderr.contains("stopped part-way (1 change(s) made)"),
        "{run}"
    );
    assert!(run.stderr.contains("run the same command again"), "{run}");
    assert_eq!(bed.standin.models().len(), 1, "the model went up");
    assert!(run.stdout.contains("retry 1 of 1"), "{run}");

    bed.standin.clear_faults();
    bed.standin.clear_requests();
    let run = bed.cmd("setup", &["-t", TAG]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_installed(&bed, &rel);
    assert!(
        !bed.es_writes()
            .iter()
            .any(|w| w.contains("/_ml/trained_models/")),
        "not uploaded again: {:?}",
        bed.es_writes()
    );

    // 429 on the very first request: still 8, not "cannot connect".
    bed.standin
        .add_fault(fault(Service::Es, "GET", r"^/$", 100, status(429, Some(1))));
    let run = bed.cmd("remove", &["--retries", "0"]).await;
    assert_eq!(run.code, 8, "{run}");
    assert!(run.stderr.contains("HTTP 429"), "{run}");
}

/// Finding 8: a release host that accepts the connection and never answers, or stops sending
/// half-way, fails after --timeout with the release exit code; nothing hangs.
#[tokio::test]
async fn a_release_host_that_never_answers_times_out() {
    let bed = Bed::start().await;
    bed.publish(TAG, Layout::V2);
    let quick = |cmd: &str| -> Vec<String> {
        let mut args: Vec<String> = vec![cmd.into(), "-t".into(), TAG.into()];
        args.extend(bed.release_opts());
        args.extend([
            "-u".into(),
            bed.standin.es_url(),
            "-p".into(),
            SECRET.into(),
            "--timeout".into(),
            "2s".into(),
            "--retries".into(),
            "1".into(),
        ]);
        args
    };
    bed.standin.add_fault(fault(
        Service::GitHub,
        "GET",
        r"^/repos/.*/releases/tags/",
        100,
        FaultAction::Delay(std::time::Duration::from_secs(3600)),
    ));
    let run = bed.run(&quick("setup")).await;
    assert_eq!(run.code, 7, "{run}");
    assert!(run.stderr.contains("timed out"), "{run}");
    assert!(run.stdout.contains("retry 1 of 1"), "{run}");

    bed.standin.clear_faults();
    bed.standin.add_fault(fault(
        Service::GitHub,
        "GET",
        ZIP_DOWNLOAD,
        100,
        FaultAction::StallBody,
    ));
    let run = bed.run(&quick("plan")).await;
    assert_eq!(run.code, 7, "{run}");
    assert!(run.stderr.contains("timed out"), "{run}");
    assert!(run.stderr.contains("/download/"), "names the URL: {run}");
    assert!(partials(&bed.cache()).is_empty());
    assert!(bed.es_writes().is_empty());
}

/// Finding 9: a FIFO in the folder is refused (reading it would wait forever), a folder not
/// named like a tag is refused, and `-d release.zip` installs the zip.
#[tokio::test]
async fn release_folder_and_zip_edges() {
    let bed = Bed::start().await;
    let rel = bed.unpacked(TAG, Layout::V2);
    let dir = rel.zip_path.clone();

    let fifo = dir.join("notes.txt");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let run = bed.cmd("setup", &["-d", &dir.display().to_string()]).await;
    assert_eq!(run.code, 7, "{run}");
    assert!(run.stderr.contains("notes.txt"), "{run}");
    assert!(run.stderr.contains("not a regular file"), "{run}");
    std::fs::remove_file(&fifo).unwrap();

    let renamed = dir.with_file_name("latest");
    std::fs::rename(&dir, &renamed).unwrap();
    let run = bed
        .cmd("setup", &["-d", &renamed.display().to_string()])
        .await;
    assert_eq!(run.code, 7, "{run}");
    assert!(run.stderr.contains("latest/"), "{run}");
    assert!(run.stderr.contains("named like its release tag"), "{run}");
    assert!(bed.es_writes().is_empty(), "{:?}", bed.es_writes());

    let zip = bed.dir.path().join("from-disk");
    let built = builder::write_release(&BundleSpec::small(TAG, Layout::V2), &zip).unwrap();
    let run = bed
        .cmd("setup", &["-d", &built.zip_path.display().to_string()])
        .await;
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("reading release zip"), "{run}");
    assert_installed(&bed, &built);
    assert_eq!(bed.github_requests(), 0);

    let other = bed.dir.path().join("release.tar");
    std::fs::write(&other, b"x").unwrap();
    let run = bed
        .cmd("setup", &["-d", &other.display().to_string()])
        .await;
    assert_eq!(run.code, 3, "{run}");
    assert!(
        run.stderr.contains("neither a folder nor a .zip file"),
        "{run}"
    );
}

/// Finding 9: a zip holding two entries of one name is refused (which one an unzip keeps
/// differs); nothing is written.
#[tokio::test]
async fn a_zip_with_two_entries_of_one_name_is_refused() {
    let bed = Bed::start().await;
    let tag = "ML-DGA-20210202-1";
    bed.publish_bad(tag, Defect::DuplicateEntry);
    let run = bed.cmd("setup", &["-t", tag]).await;
    assert_eq!(run.code, 7, "{run}");
    assert!(run.stderr.contains("appears twice in the zip"), "{run}");
    assert!(run.stderr.contains(".json"), "names the entry: {run}");
    assert!(bed.es_writes().is_empty(), "{:?}", bed.es_writes());
}

/// Finding 9: messages carry the HTTP status and the URL; an empty answer is called one; a
/// Kibana 404 is not "Not Found: Not Found".
#[tokio::test]
async fn messages_name_the_status_and_the_url() {
    let bed = Bed::start().await;
    bed.publish(TAG, Layout::V2);
    bed.standin.add_fault(fault(
        Service::Es,
        "GET",
        r"^/$",
        1,
        FaultAction::Status {
            code: 200,
            retry_after: None,
            body: Some(String::new()),
        },
    ));
    let run = bed.cmd("remove", &[]).await;
    assert_eq!(run.code, 4, "{run}");
    assert!(
        run.stderr.contains(&format!(
            "the answer from {}/ is not JSON: an empty body",
            bed.standin.es_url()
        )),
        "{run}"
    );
    assert!(run.stderr.contains("(HTTP 200)"), "{run}");

    bed.standin.add_fault(fault(
        Service::Kibana,
        "GET",
        r"^/api/status$",
        1,
        FaultAction::Status {
            code: 404,
            retry_after: None,
            body: Some(r#"{"statusCode":404,"error":"Not Found","message":"Not Found"}"#.into()),
        },
    ));
    let mut args: Vec<String> = vec!["setup".into(), "-t".into(), TAG.into()];
    args.extend(bed.release_opts());
    args.extend(bed.conn());
    args.extend(["--kibana-url".into(), bed.standin.kibana_url()]);
    let run = bed.run(&args).await;
    assert_ne!(run.code, 0, "{run}");
    assert!(!run.stderr.contains("Not Found: Not Found"), "{run}");
    assert!(
        run.stderr.contains(&format!(
            "{}/api/status answered Not Found (HTTP 404)",
            bed.standin.kibana_url()
        )),
        "{run}"
    );
}

/// Finding 9: off a terminal, the download and the cluster check run side by side and every
/// progress line is written whole.
#[tokio::test]
async fn progress_lines_stay_whole_off_a_terminal() {
    let bed = Bed::start().await;
    bed.publish(TAG, Layout::V2);
    // The download ends after the cluster has answered.
    bed.standin.add_fault(fault(
        Service::GitHub,
        "GET",
        ZIP_DOWNLOAD,
        1,
        FaultAction::Delay(std::time::Duration::from_millis(1500)),
    ));
    let run = bed.cmd("setup", &["-t", TAG]).await;
    assert_eq!(run.code, 0, "{run}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    let es = lines
        .iter()
        .position(|l| l.starts_with("Elasticsearch "))
        .unwrap_or_else(|| panic!("{run}"));
    let dl = lines
        .iter()
        .position(|l| l.starts_with(&format!("downloading release {TAG} (")))
        .unwrap_or_else(|| panic!("{run}"));
    assert!(es < dl, "the cluster answered first: {run}");
    assert!(
        lines[dl].ends_with(")") && lines[dl].contains(" ... done ("),
        "{run}"
    );
    for l in &lines {
        assert!(
            !l.contains("Elasticsearch ") || l.starts_with("Elasticsearch "),
            "a line begun by one task, finished by another: {l:?}\n{run}"
        );
        assert!(l.matches(" ... ").count() <= 1, "{l:?}\n{run}");
    }
}

/// Finding 9: after an upgrade the anomaly job's ownership marker names the new release; plan
/// says so first.
#[tokio::test]
async fn the_job_marker_follows_an_upgrade() {
    let bed = Bed::start().await;
    let old = bed.publish(TAG, Layout::V2);
    let new_tag = "ML-DGA-20210301-2";
    let new = bed.publish(new_tag, Layout::V2);
    let kb = bed.standin.kibana_url();
    let with_kibana = |cmd: &str, tag: &str| {
        let mut args: Vec<String> = vec![cmd.into(), "-t".into(), tag.into()];
        args.extend(bed.release_opts());
        args.extend(bed.conn());
        args.extend(["--kibana-url".to_string(), kb.clone()]);
        args
    };
    let job_release = || {
        bed.standin.jobs()["dga_high_sum_probability"]["custom_settings"]["dga_operator"]["release"]
            .as_str()
            .map(str::to_string)
    };
    let run = bed.run(&with_kibana("setup", &old.tag)).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(job_release().as_deref(), Some(old.tag.as_str()));

    let plan = bed.run(&with_kibana("plan", &new.tag)).await;
    assert_eq!(plan.code, 2, "{plan}");
    assert!(
        plan.stdout
            .contains(&format!("mark anomaly detection job dga_high_sum_probability as installed with release {new_tag}")),
        "{plan}"
    );
    let run = bed.run(&with_kibana("setup", &new.tag)).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(job_release().as_deref(), Some(new_tag));
    assert!(
        bed.standin.requests().iter().any(|r| r.method == "POST"
            && r.path == "/_ml/anomaly_detectors/dga_high_sum_probability/_update"
            && r.status == 200),
        "{run}"
    );
    let again = bed.run(&with_kibana("plan", &new.tag)).await;
    assert_eq!(again.code, 0, "settled: {again}");
}

/// Finding 9: remove names every kind it leaves in place: the package's rules, job and
/// datafeed, model, pipelines and scripts that setup did not install.
#[tokio::test]
async fn remove_names_every_kind_it_leaves() {
    let bed = Bed::start().await;
    bed.publish(TAG, Layout::V2);
    let kb = bed.standin.kibana_url();
    let mut setup: Vec<String> = vec!["setup".into(), "-t".into(), TAG.into()];
    setup.extend(bed.release_opts());
    setup.extend(bed.conn());
    setup.extend(["--kibana-url".to_string(), kb.clone()]);
    let run = bed.run(&setup).await;
    assert_eq!(run.code, 0, "{run}");
    // Made someone else's: the markers and owner tags taken off, as the old CLI left them.
    let owner_tag = format!("dga-operator:owner:{CLI_OWNER}");
    let rules = bed.standin.rules("default");
    for mut r in rules.clone() {
        let tags: Vec<Value> = r["tags"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| **t != json!(owner_tag))
            .cloned()
            .collect();
        r["tags"] = json!(tags);
        bed.standin
            .delete_rule("default", r["rule_id"].as_str().unwrap());
        bed.standin.put_rule("default", r);
    }
    let client = reqwest::Client::new();
    let resp = client
        .post(format!(
            "{}/_ml/anomaly_detectors/dga_high_sum_probability/_update",
            bed.standin.es_url()
        ))
        .basic_auth("elastic", Some(SECRET))
        .json(&json!({"custom_settings": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for (id, mut m) in bed.standin.models() {
        m["metadata"] = json!({});
        bed.standin.delete_model(&id);
        bed.standin.put_model(&id, m);
    }
    let mut rm: Vec<String> = vec!["remove".into()];
    rm.extend(bed.conn());
    rm.extend(["--kibana-url".to_string(), kb]);
    let run = bed.run(&rm).await;
    assert_eq!(run.code, 0, "{run}");
    let left = run
        .stdout
        .lines()
        .find(|l| l.starts_with("left in place"))
        .unwrap_or_else(|| panic!("{run}"));
    assert!(left.contains("anomaly detection job dga_high_sum_probability and datafeed datafeed-dga_high_sum_probability"), "{left}");
    assert!(left.contains("trained model "), "{left}");
    for r in &rules {
        assert!(
            left.contains(&format!(
                "detection rule {}",
                r["rule_id"].as_str().unwrap()
            )),
            "{left}"
        );
    }
    assert_eq!(bed.standin.rules("default").len(), rules.len());
    assert!(bed.standin.jobs().contains_key("dga_high_sum_probability"));
    assert_eq!(bed.standin.models().len(), 1);
}

/// A release whose model file is a `GET _ml/trained_models/<id>?include=definition` export
/// (read-only fields included) installs on every version: the CLI leaves out what that version's
/// PUT refuses, and keeps what it takes (8.x keeps `model_size_bytes`).
#[tokio::test]
async fn a_get_export_model_installs_on_every_version() {
    for version in ["7.17", "8.17", "9.2"] {
        let bed = Bed::start_with(StandinConfig {
            es_version: version.into(),
            ..StandinConfig::default()
        })
        .await;
        let tag = "ML-DGA-20210202-1";
        let spec = BundleSpec::small(tag, Layout::V2).as_get_export();
        let rel =
            builder::write_release(&spec, &bed.dir.path().join("releases").join(tag)).unwrap();
        bed.standin.publish_built(REPO, &rel).unwrap();
        let run = bed.cmd("setup", &["-t", tag]).await;
        assert_eq!(run.code, 0, "{version}: {run}");
        assert!(
            run.stdout.contains("left out of the upload")
                && run.stdout.contains("created_by")
                && run.stdout.contains("location"),
            "{version}: {run}"
        );
        let model = assert_installed(&bed, &rel);
        let stored = &bed.standin.models()[&model];
        if version.starts_with('7') {
            assert!(run.stdout.contains("model_size_bytes"), "{version}: {run}");
        } else {
            assert!(!run.stdout.contains("model_size_bytes"), "{version}: {run}");
            assert_eq!(stored["model_size_bytes"], 246_784_104u64, "{version}");
        }
        // Elasticsearch's own values, not the export's.
        assert_eq!(
            stored["create_time"]
                .as_u64()
                .map(|t| t > 1_611_725_000_000),
            Some(true)
        );
    }
}

/// A model field the cluster's PUT still refuses (not one GET writes) is a bundle problem that
/// names the field, exit 7; nothing else is written.
#[tokio::test]
async fn a_model_field_elasticsearch_refuses_is_named() {
    let bed = Bed::start().await;
    let rel = bed.unpacked(TAG, Layout::V2);
    let file = rel.zip_path.join(format!("{}_model.json", rel.model_id));
    let mut model: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    model["frobnicate"] = json!(true);
    std::fs::write(&file, serde_json::to_vec(&model).unwrap()).unwrap();
    let dir = rel.zip_path.display().to_string();
    let run = bed.cmd("setup", &["-d", &dir]).await;
    assert_eq!(run.code, 7, "{run}");
    assert!(run.stderr.contains("invalid bundle"), "{run}");
    assert!(run.stderr.contains("unknown field [frobnicate]"), "{run}");
    assert!(run.stderr.contains("_model.json"), "{run}");
    assert!(
        run.stderr.contains("hint: the model file carries a field"),
        "{run}"
    );
    assert!(bed.standin.models().is_empty() && bed.standin.pipelines().is_empty());
}

/// A model upload over the cluster's `http.max_content_length` is answered 413 before its body
/// is read: one upload, a message naming the limit, exit 7; no retries.
#[tokio::test]
async fn a_model_over_http_max_content_length_is_refused_once() {
    for (model_bytes, limit) in [(60_000usize, 1_000u64), (40_000_000, 1_000_000)] {
        let bed = Bed::start().await;
        bed.standin.set_http_max_content_length(limit);
        let tag = "ML-DGA-20210203-1";
        let spec = BundleSpec::small(tag, Layout::V2).with_model_bytes(model_bytes);
        let rel =
            builder::write_release(&spec, &bed.dir.path().join("releases").join(tag)).unwrap();
        bed.standin.publish_built(REPO, &rel).unwrap();
        let run = bed.cmd("setup", &["-t", tag]).await;
        assert_eq!(run.code, 7, "{model_bytes}: {run}");
        assert!(
            run.stderr.contains("http.max_content_length") && run.stderr.contains("413"),
            "{run}"
        );
        assert!(
            run.stderr
                .contains("hint: http.max_content_length is a static"),
            "{run}"
        );
        let puts: Vec<(u16, usize)> = bed
            .standin
            .requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.path.starts_with("/_ml/trained_models/"))
            .map(|r| (r.status, r.body_len))
            .collect();
        // One upload; when the client saw the connection cut instead of the 413 (it was still
        // writing), one more request with the headers alone: never a retried upload.
        assert!(
            (1..=2).contains(&puts.len()) && puts.iter().all(|p| p.0 == 413),
            "{model_bytes}: {puts:?}"
        );
        // The larger upload is several times the limit: the answer came while it was streaming.
        assert!(puts[0].1 as u64 > 4 * limit, "{puts:?}");
        assert!(bed.standin.models().is_empty());
    }
}

/// `setup --fleet-package` does from the command line what a DgaModel with
/// `spec.fleetPackage` does (issue 20): the package through Kibana's Fleet API, the hook wired
/// to its router, Elastic's rules, the module's job; a second run writes nothing; `plan` sees
/// nothing to do; `remove --fleet-package` takes the hook processor, the job and the package.
/// An air-gapped Kibana gets the archive by upload (`--package-url`, `--sha256`), and a
/// registry Kibana cannot reach is told with exit 7 and nothing written.
#[tokio::test]
async fn fleet_package_setup_plan_remove() {
    let bed = Bed::start_with(StandinConfig {
        kibana_version: "9.2.0".into(),
        es_version: "9.2.0".into(),
        kibana_prebuilt_dga: true,
        fleet_packages: vec!["dga-2.3.7".into()],
        ..StandinConfig::default()
    })
    .await;
    let kb = bed.standin.kibana_url();
    let with_kibana = |cmd: &str, extra: &[&str]| {
        let mut args: Vec<String> = vec![cmd.into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--kibana-url".to_string(), kb.clone()]);
        if cmd != "remove" {
            args.extend(bed.release_opts());
        }
        args.extend(bed.conn());
        args
    };
    let hook = "logs-network_traffic.dns@custom";
    let router = "2.3.7-ml_dga_ingest_pipeline";
    let hooked = |bed: &Bed| -> Vec<String> {
        bed.standin
            .pipelines()
            .get(hook)
            .and_then(|h| h["processors"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|p| p["pipeline"]["tag"] == json!(format!("dga-operator:{CLI_OWNER}")))
            .filter_map(|p| p["pipeline"]["name"].as_str().map(str::to_string))
            .collect()
    };

    // Without Kibana: a usage error naming the flag.
    let run = bed
        .run(&{
            let mut a = vec![
                "setup".to_string(),
                "--fleet-package".into(),
                "2.3.7".into(),
            ];
            a.extend(bed.conn());
            a
        })
        .await;
    assert_eq!(run.code, 3, "{run}");
    assert!(run.stderr.contains("--kibana-url"), "{run}");

    let run = bed
        .run(&with_kibana("setup", &["--fleet-package", "2.3.7"]))
        .await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        bed.standin.fleet_installed_version("dga").as_deref(),
        Some("2.3.7")
    );
    assert_eq!(hooked(&bed), vec![router.to_string()], "{run}");
    let rules = bed.standin.rules("default");
    assert_eq!(rules.len(), 4, "{rules:?}");
    assert!(
        rules
            .iter()
            .all(|r| r["immutable"] == true && r["enabled"] == true),
        "{rules:?}"
    );
    let jobs = bed.standin.jobs();
    let job = &jobs["dga_high_sum_probability"];
    assert_eq!(
        job["custom_settings"]["created_by"], "ml-module-dga",
        "{job}"
    );
    assert_eq!(
        job["custom_settings"]["dga_operator"]["owner"], CLI_OWNER,
        "{job}"
    );
    assert!(
        run.stdout.contains("installed Fleet package dga 2.3.7"),
        "{run}"
    );
    // The canary run through the package's router (the stand-in cannot run the package's
    // painless scripts: not conclusive there, never a failure).
    assert!(
        run.stdout.contains("\nverified: ")
            || (run.stdout.contains("\nnot verified (nothing failed): ")
                && run
                    .stdout
                    .contains("skipped processors it cannot run: script(inline)")),
        "{run}"
    );

    // Again: nothing to do, nothing written.
    bed.standin.clear_requests();
    let again = bed
        .run(&with_kibana("setup", &["--fleet-package", "2.3.7"]))
        .await;
    assert_eq!(again.code, 0, "{again}");
    assert!(
        again
            .stdout
            .contains("nothing to do: Fleet package dga 2.3.7 is installed and wired"),
        "{again}"
    );
    let writes: Vec<String> = bed
        .standin
        .requests()
        .iter()
        .filter(|r| r.service != Service::GitHub && r.is_write())
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(writes, Vec::<String>::new(), "{again}");
    let plan = bed
        .run(&with_kibana("plan", &["--fleet-package", "2.3.7"]))
        .await;
    assert_eq!(plan.code, 0, "{plan}");
    assert!(plan.stdout.contains("no changes"), "{plan}");

    // Another version someone has in place: a conflict (exit 6) without --overwrite.
    let other = bed
        .run(&with_kibana("plan", &["--fleet-package", "2.3.6"]))
        .await;
    assert_eq!(other.code, 6, "{other}");
    assert!(
        other.stderr.contains("2.3.7") && other.stderr.contains("--overwrite"),
        "{other}"
    );

    let rm = bed
        .run(&with_kibana("remove", &["--fleet-package", "2.3.7"]))
        .await;
    assert_eq!(rm.code, 0, "{rm}");
    assert_eq!(bed.standin.fleet_installed_version("dga"), None, "{rm}");
    assert!(hooked(&bed).is_empty(), "{rm}");
    assert!(
        !bed.standin.jobs().contains_key("dga_high_sum_probability"),
        "{rm}"
    );

    // Air-gapped: Kibana has no registry; the archive comes from a mirror, checked.
    bed.standin.set_fleet_registry_reachable(false);
    bed.standin.clear_requests();
    let refused = bed
        .run(&with_kibana("setup", &["--fleet-package", "2.3.7"]))
        .await;
    assert_eq!(refused.code, 7, "{refused}");
    assert!(refused.stderr.contains("--package-url"), "{refused}");
    assert!(
        !bed.standin
            .requests()
            .iter()
            .any(|r| r.service != Service::GitHub && r.is_write()),
        "{refused}"
    );
    let zip = bed.standin.fleet_package_zip("2.3.7").unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&zip))
    };
    let url = format!("{}/epr/dga/dga-2.3.7.zip", bed.standin.fleet_registry_url());
    let bad = bed
        .run(&with_kibana(
            "setup",
            &[
                "--fleet-package",
                "2.3.7",
                "--package-url",
                &url,
                "--sha256",
                &"0".repeat(64),
            ],
        ))
        .await;
    assert_eq!(bad.code, 7, "{bad}");
    assert!(bad.stderr.contains("--sha256"), "{bad}");
    let up = bed
        .run(&with_kibana(
            "setup",
            &[
                "--fleet-package",
                "2.3.7",
                "--package-url",
                &url,
                "--sha256",
                &sha,
            ],
        ))
        .await;
    assert_eq!(up.code, 0, "{up}");
    assert!(up.stdout.contains("by upload"), "{up}");
    assert_eq!(
        bed.standin.fleet_installed_version("dga").as_deref(),
        Some("2.3.7")
    );
    assert_eq!(hooked(&bed), vec![router.to_string()], "{up}");
}
